// Package exampleflags holds what the examples share: the flags that point
// them at a Kafka cluster (brokers, topic, group, TLS, SASL), and the setup
// of their topic. It is internal: not part of multiconsumer's API.
//
// Without -brokers (and without KAFKA_BROKERS), an example runs on an
// embedded broker (kfake), on a topic of its own that it fills with demo
// messages. With -brokers, on a real cluster:
//
//   - without -topic, the example creates a topic of its own (a unique
//     name), produces its demo messages to it, and deletes it at the end;
//   - with -topic, it creates the topic only if it does not exist (and then
//     produces its demo messages to it, and keeps it). A topic that exists
//     is only read: the example produces to it only with -produce, and
//     never deletes it.
//
// Without -group, the quickstart and iter examples use a group of their own
// (a unique name), so they commit nothing to a group of yours.
package exampleflags

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"strings"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// Environment variables read when the matching flag is not given.
const (
	EnvBrokers  = kafkatest.EnvBrokers // KAFKA_BROKERS
	EnvUsername = "KAFKA_USERNAME"
	EnvPassword = "KAFKA_PASSWORD"
)

// Flags are the connection flags of an example, registered on
// flag.CommandLine by Register.
type Flags struct {
	name         string
	defaultGroup string

	brokers, topic, group string
	tls, tlsInsecure      bool
	tlsCA, tlsCert        string
	tlsKey                string
	sasl, user, password  string
	produce               bool

	// Set by Parse.
	addrs  []string
	tlsCfg *tls.Config
	mech   sasl.Mechanism
}

// Register registers the shared flags on flag.CommandLine for the example
// called name. defaultGroup is the -group default; "" means a unique group
// per run.
func Register(name, defaultGroup string) *Flags {
	f := &Flags{name: name, defaultGroup: defaultGroup}
	groupHelp := "consumer group (default: a new one per run)"
	if defaultGroup != "" {
		groupHelp = "consumer group"
	}
	flag.StringVar(&f.brokers, "brokers", "", "bootstrap brokers of a Kafka cluster, host:port,... (default $"+EnvBrokers+"; if unset, an embedded broker)")
	flag.StringVar(&f.topic, "topic", "", "topic, created if it does not exist (default: a new one, deleted at the end)")
	flag.StringVar(&f.group, "group", defaultGroup, groupHelp)
	flag.BoolVar(&f.produce, "produce", false, "produce the demo messages also to a -topic that exists already")
	flag.BoolVar(&f.tls, "tls", false, "connect with TLS, verifying the brokers against the system's CAs")
	flag.StringVar(&f.tlsCA, "tls-ca", "", "PEM `file` of the CAs to verify the brokers with, instead of the system's (implies -tls)")
	flag.StringVar(&f.tlsCert, "tls-cert", "", "PEM `file` of a client certificate, with -tls-key (implies -tls)")
	flag.StringVar(&f.tlsKey, "tls-key", "", "PEM `file` of the client certificate's key (implies -tls)")
	flag.BoolVar(&f.tlsInsecure, "tls-insecure", false, "do not verify the brokers' certificates (implies -tls)")
	flag.StringVar(&f.sasl, "sasl", "", "SASL `mechanism`: plain, scram-sha-256 or scram-sha-512")
	flag.StringVar(&f.user, "sasl-user", "", "SASL user name (default $"+EnvUsername+")")
	flag.StringVar(&f.password, "sasl-password", "", "SASL password (default $"+EnvPassword+"; the environment keeps it out of ps)")
	return f
}

// Parse parses the command line and checks the shared flags. On a wrong
// flag it says what is wrong and exits with status 2, as flag.Parse does.
func (f *Flags) Parse() {
	log.SetFlags(0)
	log.SetPrefix(f.name + ": ")
	flag.Parse()
	if err := f.check(); err != nil {
		f.Usagef("%v", err)
	}
}

// Usagef reports a wrong command line and exits with status 2.
func (f *Flags) Usagef(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s: %s\n(-h lists the flags)\n", f.name, fmt.Sprintf(format, args...))
	os.Exit(2)
}

// AtLeast exits through Usagef unless the value of flag name is at least min.
func (f *Flags) AtLeast(min int, name string, value int) {
	if value < min {
		f.Usagef("-%s must be at least %d, not %d", name, min, value)
	}
}

func (f *Flags) check() error {
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (brokers go in -brokers host:port,...)", flag.Arg(0))
	}
	brokers, from := f.brokers, "-brokers"
	if brokers == "" {
		brokers, from = os.Getenv(EnvBrokers), "$"+EnvBrokers
	}
	for b := range strings.SplitSeq(brokers, ",") {
		if b = strings.TrimSpace(b); b == "" {
			continue
		}
		if host, port, err := net.SplitHostPort(b); err != nil || host == "" || port == "" {
			return fmt.Errorf("%s: %q is not host:port", from, b)
		}
		f.addrs = append(f.addrs, b)
	}
	if f.brokers != "" && len(f.addrs) == 0 {
		return errors.New("-brokers: no broker address")
	}

	useTLS := f.tls || f.tlsCA != "" || f.tlsCert != "" || f.tlsKey != "" || f.tlsInsecure
	if len(f.addrs) == 0 && (useTLS || f.sasl != "" || f.user != "" || f.password != "") {
		return errors.New("TLS and SASL flags need -brokers: the embedded broker speaks plaintext")
	}
	if useTLS {
		cfg, err := f.tlsConfig()
		if err != nil {
			return err
		}
		f.tlsCfg = cfg
	}

	if f.sasl == "" {
		if f.user != "" || f.password != "" {
			return errors.New("-sasl-user and -sasl-password need -sasl plain|scram-sha-256|scram-sha-512")
		}
		return nil
	}
	var algo scram.Algorithm
	switch strings.ToLower(f.sasl) {
	case "plain":
	case "scram-sha-256":
		algo = scram.SHA256
	case "scram-sha-512":
		algo = scram.SHA512
	default:
		return fmt.Errorf("-sasl: unknown mechanism %q (want plain, scram-sha-256 or scram-sha-512)", f.sasl)
	}
	user, password := f.user, f.password
	if user == "" {
		user = os.Getenv(EnvUsername)
	}
	if password == "" {
		password = os.Getenv(EnvPassword)
	}
	if user == "" || password == "" {
		return fmt.Errorf("-sasl %s needs a user and a password: -sasl-user and -sasl-password, or $%s and $%s", f.sasl, EnvUsername, EnvPassword)
	}
	if algo == nil {
		f.mech = plain.Mechanism{Username: user, Password: password}
		return nil
	}
	var err error
	if f.mech, err = scram.Mechanism(algo, user, password); err != nil {
		return fmt.Errorf("-sasl %s: %w", f.sasl, err)
	}
	return nil
}

func (f *Flags) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: f.tlsInsecure}
	if f.tlsCA != "" {
		pem, err := os.ReadFile(f.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("-tls-ca: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-ca: no PEM certificate in %s", f.tlsCA)
		}
	}
	if (f.tlsCert == "") != (f.tlsKey == "") {
		return nil, errors.New("-tls-cert and -tls-key go together")
	}
	if f.tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(f.tlsCert, f.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("-tls-cert, -tls-key: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Cluster is where an example runs: the cluster, its topic and its group.
type Cluster struct {
	Brokers []string
	Dialer  *kafka.Dialer
	Topic   string
	Group   string
	// Partitions is the number of partitions of Topic.
	Partitions int
	// ProduceDemo reports whether the example should produce its demo
	// messages: on the embedded broker, to a topic it created, or with
	// -produce.
	ProduceDemo bool
	// Private reports whether Topic is this run's own (the embedded
	// broker's, or one created under a unique name): no one else
	// produces to it or consumes it.
	Private bool

	embedded  *kafkatest.Cluster
	transport *kafka.Transport
	client    *kafka.Client
	delete    bool // Topic was created under a unique name: delete it at Close
}

// Setup connects to the cluster of the flags (or starts an embedded one),
// and gets the example's topic ready: it creates it with partitions
// partitions when it does not exist. Close releases the cluster.
func (f *Flags) Setup(ctx context.Context, partitions int) (_ *Cluster, err error) {
	c := &Cluster{Brokers: f.addrs, Topic: f.topic, Group: f.group}
	if c.Group == "" {
		c.Group = kafkatest.UniqueName(f.name + "-group")
	}
	if len(c.Brokers) == 0 {
		if c.embedded, err = kafkatest.Start(); err != nil {
			return nil, err
		}
		c.Brokers = c.embedded.Brokers()
	}
	c.Dialer = &kafka.Dialer{
		Timeout:       10 * time.Second,
		DualStack:     true,
		ClientID:      "multiconsumer-example-" + f.name,
		TLS:           f.tlsCfg,
		SASLMechanism: f.mech,
	}
	c.transport = &kafka.Transport{
		Dial:        (&net.Dialer{Timeout: c.Dialer.Timeout}).DialContext,
		DialTimeout: c.Dialer.Timeout,
		ClientID:    c.Dialer.ClientID,
		TLS:         f.tlsCfg,
		SASL:        f.mech,
		MetadataTTL: time.Second,
	}
	c.client = &kafka.Client{Addr: kafka.TCP(c.Brokers...), Timeout: 30 * time.Second, Transport: c.transport}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()

	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	generated := c.Topic == ""
	if generated {
		c.Topic = kafkatest.UniqueName(f.name)
	}
	c.Private = generated || c.embedded != nil
	exists, n, err := c.describe(ctx)
	if err != nil {
		return nil, err
	}
	if !exists {
		var created bool
		created, err = c.create(ctx, partitions)
		c.delete = created && generated && c.embedded == nil
		if err != nil {
			return nil, err
		}
		c.ProduceDemo = created
		if _, n, err = c.describe(ctx); err != nil {
			return nil, err
		}
		if c.embedded == nil {
			switch {
			case !created: // someone else created it meanwhile
				fmt.Printf("topic %s: %d partitions, created by someone else meanwhile\n", c.Topic, n)
			case generated:
				fmt.Printf("created topic %s with %d partitions (deleted at the end)\n", c.Topic, n)
			default:
				fmt.Printf("created topic %s with %d partitions (kept at the end)\n", c.Topic, n)
			}
		}
	} else if c.embedded == nil {
		how := "only read: -produce adds the demo messages to it"
		if f.produce {
			how = "the demo messages are added to it (-produce)"
		}
		fmt.Printf("topic %s exists: %d partitions, %s\n", c.Topic, n, how)
	}
	c.Partitions = n
	c.ProduceDemo = c.ProduceDemo || f.produce
	return c, nil
}

// describe reports whether the topic exists, and its partitions.
func (c *Cluster) describe(ctx context.Context) (exists bool, partitions int, err error) {
	md, err := c.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{c.Topic}})
	if err != nil {
		return false, 0, fmt.Errorf("cannot reach the %s: %w%s", c, err, hint(err))
	}
	if len(md.Topics) != 1 {
		return false, 0, fmt.Errorf("metadata of topic %q: %d topics in the answer", c.Topic, len(md.Topics))
	}
	switch t := md.Topics[0]; {
	case errors.Is(t.Error, kafka.UnknownTopicOrPartition):
		return false, 0, nil
	case t.Error != nil:
		return false, 0, fmt.Errorf("metadata of topic %q: %w", c.Topic, t.Error)
	default:
		return true, len(t.Partitions), nil
	}
}

// hint guesses the cause of a failure to reach the cluster.
func hint(err error) string {
	switch {
	case strings.Contains(err.Error(), "TLS"):
		return "" // kafka-go says "broker appears to be expecting TLS"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return " (the broker closed the connection: do -tls and -sasl match its listener?)"
	case errors.Is(err, context.DeadlineExceeded):
		return " (no answer: are the address and port right?)"
	}
	return ""
}

// create creates the topic, with the broker's default replication factor,
// and waits until every partition has a leader that answers. It reports
// whether it created the topic (false: it exists already), even when the
// wait fails.
func (c *Cluster) create(ctx context.Context, partitions int) (bool, error) {
	res, err := c.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: c.Topic, NumPartitions: partitions, ReplicationFactor: -1}},
	})
	if err == nil {
		err = res.Errors[c.Topic]
	}
	if errors.Is(err, kafka.TopicAlreadyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create topic %q: %w", c.Topic, err)
	}
	// A new partition's leader answers a moment after the topic is listed.
	for {
		reqs := make([]kafka.OffsetRequest, partitions)
		for p := range reqs {
			reqs[p] = kafka.LastOffsetOf(p)
		}
		res, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{c.Topic: reqs}})
		ready := err == nil && len(res.Topics[c.Topic]) == partitions
		for i := 0; ready && i < partitions; i++ {
			ready = res.Topics[c.Topic][i].Error == nil
		}
		if ready {
			return true, nil
		}
		select {
		case <-ctx.Done():
			return true, fmt.Errorf("topic %q created, but its partitions have no leader yet: %w", c.Topic, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Config returns a multiconsumer.Config for the cluster, topic and group.
func (c *Cluster) Config() multiconsumer.Config {
	return multiconsumer.Config{Brokers: c.Brokers, Topic: c.Topic, Group: c.Group, Dialer: c.Dialer}
}

// Embedded reports whether the cluster is the embedded broker.
func (c *Cluster) Embedded() bool { return c.embedded != nil }

// String says where the example runs.
func (c *Cluster) String() string {
	if c.embedded != nil {
		return "embedded broker (kfake)"
	}
	s := "Kafka cluster at " + strings.Join(c.Brokers, ",")
	switch {
	case c.Dialer.TLS != nil && c.Dialer.SASLMechanism != nil:
		s += " (TLS, SASL " + c.Dialer.SASLMechanism.Name() + ")"
	case c.Dialer.TLS != nil:
		s += " (TLS)"
	case c.Dialer.SASLMechanism != nil:
		s += " (SASL " + c.Dialer.SASLMechanism.Name() + ")"
	}
	return s
}

// Close deletes the topic if Setup created it under a unique name on a
// real cluster, releases the connections, and stops an embedded broker.
func (c *Cluster) Close() {
	if c.delete {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := c.client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{c.Topic}})
		cancel()
		if err == nil {
			err = res.Errors[c.Topic]
		}
		if err != nil {
			log.Printf("could not delete topic %s: %v", c.Topic, err)
		}
		c.delete = false
	}
	c.transport.CloseIdleConnections()
	if c.embedded != nil {
		c.embedded.Close()
	}
}

// Produce appends msgs to partition of the topic, in order, with acks from
// all in-sync replicas, in batches of at most 4096 messages or 512 KiB. Only
// Key, Value and Headers of msgs are used.
func (c *Cluster) Produce(ctx context.Context, partition int, msgs ...kafka.Message) error {
	for len(msgs) > 0 {
		n, size := 0, 0
		for n < len(msgs) && n < 4096 && (n == 0 || size+len(msgs[n].Key)+len(msgs[n].Value) <= 512<<10) {
			size += len(msgs[n].Key) + len(msgs[n].Value)
			n++
		}
		if err := c.produce(ctx, partition, msgs[:n]); err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// produce sends one batch, retrying while the error is temporary (such as
// NOT_LEADER while a new partition's leader gets ready).
func (c *Cluster) produce(ctx context.Context, partition int, msgs []kafka.Message) error {
	for {
		// Records read their keys and values: each attempt needs its own.
		records := make([]kafka.Record, len(msgs))
		for i, m := range msgs {
			records[i] = kafka.Record{Headers: m.Headers}
			if m.Key != nil {
				records[i].Key = kafka.NewBytes(m.Key)
			}
			if m.Value != nil {
				records[i].Value = kafka.NewBytes(m.Value)
			}
		}
		res, err := c.client.Produce(ctx, &kafka.ProduceRequest{
			Topic:        c.Topic,
			Partition:    partition,
			RequiredAcks: kafka.RequireAll,
			Records:      kafka.NewRecordReader(records...),
		})
		if err == nil {
			err = res.Error
		}
		if err == nil {
			return nil
		}
		var kerr kafka.Error
		if !errors.As(err, &kerr) || !kerr.Temporary() {
			return fmt.Errorf("produce to %s[%d]: %w", c.Topic, partition, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("produce to %s[%d]: %w (last error: %w)", c.Topic, partition, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
