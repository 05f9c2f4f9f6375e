package multiconsumer

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A member paused (SIGSTOP) past its session timeout, while its handlers
// hold messages, and then resumed: the group gave its partitions to
// another member meanwhile, which consumed and committed further. The
// resumed member must not commit over the new owner (the committed offsets
// never go back), and must rejoin the group. It runs under the tests'
// group protocol (classic, or consumer with MULTICONSUMER_GROUP_PROTOCOL),
// with the member process of TestGroupChurn.
func TestGroupPausedMemberResumes(t *testing.T) {
	t.Parallel()
	const n, per = 2, 3000
	topic := backlog(t, n, per)
	g := group(t)
	cmd := exec.Command(os.Args[0], "-test.run=^TestChurnMember$", "-test.count=1")
	cmd.Env = append(os.Environ(), envChurnMember+"="+strings.Join(append([]string{topic, g}, cluster.Brokers()...), ","))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var mu sync.Mutex
	var assigned, revoked int
	completed := 0
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			mu.Lock()
			switch line := sc.Text(); {
			case strings.HasPrefix(line, "assigned"):
				assigned++
			case strings.HasPrefix(line, "revoked"):
				revoked++
			default:
				completed++
			}
			mu.Unlock()
		}
	}()
	count := func() (int, int, int) {
		mu.Lock()
		defer mu.Unlock()
		return assigned, revoked, completed
	}
	require.Eventually(t, func() bool { _, _, c := count(); return c > 200 }, 30*time.Second, 5*time.Millisecond,
		"the member process handles messages")

	// The committed offsets never go back, from now to the end.
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var back []string
	var pw sync.WaitGroup
	pw.Go(func() {
		last := map[int]int64{}
		for ctx.Err() == nil {
			got, err := readCommitted(ctx, topic, g, n)
			if err == nil {
				mu.Lock()
				for p, o := range got {
					if o < last[p] {
						back = append(back, fmt.Sprintf("partition %d: %d after %d", p, o, last[p]))
					}
					last[p] = max(last[p], o)
				}
				mu.Unlock()
			}
			time.Sleep(20 * time.Millisecond)
		}
	})

	require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
	stopped := time.Now()
	b := open(t, groupCfg(topic, g))
	require.Eventually(t, func() bool { return len(b.Assignment()) == n }, 60*time.Second, 10*time.Millisecond,
		"b takes every partition once the paused member's session expired")
	t.Logf("b owns both partitions %v after the pause", time.Since(stopped).Round(time.Millisecond))
	drain(t, b, 500, 100)
	require.NoError(t, b.Commit(testCtx(t)))
	a0, r0, _ := count()

	require.NoError(t, cmd.Process.Signal(syscall.SIGCONT))
	// It finds itself out of the group, gives its partitions up (lost),
	// and joins again: the group rebalances, and b gives some back.
	require.Eventually(t, func() bool {
		a, r, _ := count()
		return r > r0 && a > a0
	}, 60*time.Second, 10*time.Millisecond, "the resumed member rejoins")
	require.Eventually(t, func() bool { return len(b.Assignment()) == 1 }, 60*time.Second, 10*time.Millisecond,
		"the group shares the partitions again")
	cancel()
	pw.Wait()
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, back, "committed offsets went back")
}
