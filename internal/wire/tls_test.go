package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestTLSSCRAM runs the group and share-group round trips on connections
// that did TLS and SASL/SCRAM-SHA-256 first: the raw frames go through
// kafka-go's TLS conn after its authentication.
func TestTLSSCRAM(t *testing.T) {
	server, client := tlsConfigs(t)
	e := newEnv(t, 3, 3,
		kfake.TLS(server), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "wire", "secret"))
	mech, err := scram.Mechanism(scram.SHA256, "wire", "secret")
	require.NoError(t, err)
	e.tr.TLS, e.tr.SASL = client, mech

	e.metadata(t)
	testConsumerGroup(t, e)
	testShareGroup(t, e)

	// The cluster does check: a wrong password gets nowhere.
	bad, err := scram.Mechanism(scram.SHA256, "wire", "wrong")
	require.NoError(t, err)
	tr := &kafka.Transport{TLS: client, SASL: bad}
	t.Cleanup(tr.CloseIdleConnections)
	c := &Client{Transport: tr, Addr: e.wire.Addr}
	_, err = c.Do(ctxFor(t), kmsg.NewPtrMetadataRequest())
	// kfake hangs up on a failed exchange; kafka-go reports that as EOF.
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
}

// tlsConfigs returns a server config with a fresh self-signed certificate
// for 127.0.0.1 and a client config that trusts it.
func tlsConfigs(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	client = &tls.Config{RootCAs: pool}
	return server, client
}
