package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/txpipe/txpipe/internal/kafkatest"
	"github.com/txpipe/txpipe/internal/pgtest"
)

// testCA makes a CA and a certificate it signs for 127.0.0.1, writes the
// CA certificate, the certificate and its key as PEM files in dir, and
// returns their paths and the CA pool.
func testCA(t *testing.T, dir string) (certFile, keyFile, caFile string, pool *x509.CertPool) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "txpipe test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	caFile = filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(caCert)
	return certFile, keyFile, caFile, pool
}

// TestHTTPSForAPIAndAdmin: with --tls-cert and --tls-key both addresses
// speak only HTTPS: a client trusting the CA is served, a plaintext request
// is refused, and a client that does not trust the certificate fails the
// handshake.
func TestHTTPSForAPIAndAdmin(t *testing.T) {
	db, kc := pgtest.New(t), kafkatest.New(t)
	topics := kc.Topics(t, 1)
	certFile, keyFile, _, pool := testCA(t, t.TempDir())
	key, _ := createKey(t, db.URL, "tls", "commands:write,ledger:read")
	api, admin, _ := runServing(t, []string{"ingest", "--database-url", db.URL, "--kafka-brokers", strings.Join(kc.Brokers, ","),
		"--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0", "--commands-topic", topics.Commands,
		"--tls-cert", certFile, "--tls-key", keyFile, "--log-level", "warn"})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	trusted := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	eventually(t, "the admin address answers /readyz over HTTPS", func() bool {
		resp, err := trusted.Get("https://" + admin + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	req, _ := http.NewRequest(http.MethodPost, "https://"+api+"/v1/commands",
		strings.NewReader(fmt.Sprintf(`{"command_id":%q,"type":"open_account","account_id":"tls","currency":"EUR"}`, uuid.Must(uuid.NewV7()).String())))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := trusted.Do(req)
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("POST over HTTPS = %v %v, want 202", resp, err)
	}
	resp.Body.Close()

	for _, addr := range []string{api, admin} {
		// Plaintext: the server answers 400 and serves nothing.
		if resp, err := http.Get("http://" + addr + "/readyz"); err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(body), "ready") {
				t.Errorf("plaintext to %s = %d %q, want 400 and no content", addr, resp.StatusCode, body)
			}
		}
		// A client that does not trust the certificate.
		untrusting := &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}
		if resp, err := untrusting.Get("https://" + addr + "/readyz"); err == nil {
			resp.Body.Close()
			t.Errorf("a client without the CA was served by %s", addr)
		} else if !strings.Contains(err.Error(), "certificate") {
			t.Errorf("untrusted handshake with %s failed for another reason: %v", addr, err)
		}
	}
}
