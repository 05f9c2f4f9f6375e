package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"

	"github.com/multiconsumer/multiconsumer/kafkatest"
)

// serve runs the embedded broker in this process until stdin closes. The
// first line on stdout is its address.
func serve() error {
	c, err := kafkatest.Start()
	if err != nil {
		return err
	}
	defer c.Close()
	fmt.Println(strings.Join(c.Brokers(), ","))
	_, _ = io.Copy(io.Discard, os.Stdin)
	fmt.Fprintf(os.Stderr, "broker peak RSS %.0f MiB\n", float64(vmHWM())/(1<<20))
	return nil
}

// brokerProc is a -serve child.
type brokerProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	addr  string
}

func startBroker() (*brokerProc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "-serve")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("embedded broker: %w", err)
	}
	return &brokerProc{cmd: cmd, stdin: stdin, addr: strings.TrimSpace(line)}, nil
}

// rss returns the broker's current resident set, in bytes.
func (b *brokerProc) rss() int64 {
	return statusField(fmt.Sprintf("/proc/%d/status", b.cmd.Process.Pid), "VmRSS:")
}

func (b *brokerProc) stop() {
	_ = b.stdin.Close()
	_ = b.cmd.Wait()
}
