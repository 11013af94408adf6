// x509check: what Go's crypto/x509 makes of the certificates and CRLs taonet issues.
//
// Usage: x509check UNIX_SECONDS POLICY.der KIND:FILE...
//
// KIND is "cert" (the policy certificate itself), "host", "prog" (a program
// certificate) or "crl". Every certificate is parsed, its signature checked
// against the policy certificate, and its chain to the policy certificate
// verified at UNIX_SECONDS: a program certificate for TLS server and client use
// under its channel name, the others for any use. A CRL is parsed and its
// signature checked. Prints one JSON array: per file, ok or the error, and what
// Go read (URIs, DNS names, serial, revoked serials). The standard library only.
package main

import (
	"crypto/x509"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

type result struct {
	Path    string   `json:"path"`
	OK      bool     `json:"ok"`
	Error   string   `json:"error,omitempty"`
	URIs    []string `json:"uris,omitempty"`
	DNS     []string `json:"dns,omitempty"`
	Serial  string   `json:"serial,omitempty"`
	Revoked []string `json:"revoked,omitempty"`
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "x509check:", err)
	os.Exit(2)
}

func main() {
	if len(os.Args) < 4 {
		fail(fmt.Errorf("usage: x509check UNIX_SECONDS POLICY.der KIND:FILE..."))
	}
	secs, err := strconv.ParseInt(os.Args[1], 10, 64)
	if err != nil {
		fail(err)
	}
	policyDER, err := os.ReadFile(os.Args[2])
	if err != nil {
		fail(err)
	}
	policy, policyErr := x509.ParseCertificate(policyDER)
	out := []result{}
	for _, arg := range os.Args[3:] {
		kind, path, found := strings.Cut(arg, ":")
		if !found {
			fail(fmt.Errorf("not KIND:FILE: %q", arg))
		}
		der, err := os.ReadFile(path)
		if err != nil {
			fail(err)
		}
		r := result{Path: path}
		if policyErr != nil {
			r.Error = "policy certificate: " + policyErr.Error()
		} else {
			r.Error = check(kind, der, policy, time.Unix(secs, 0), &r)
		}
		r.OK = r.Error == ""
		out = append(out, r)
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail(err)
	}
}

func check(kind string, der []byte, policy *x509.Certificate, now time.Time, r *result) string {
	if kind == "crl" {
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return "parse: " + err.Error()
		}
		if err := crl.CheckSignatureFrom(policy); err != nil {
			return "signature: " + err.Error()
		}
		for _, revoked := range crl.RevokedCertificates {
			r.Revoked = append(r.Revoked, revoked.SerialNumber.String())
		}
		return ""
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return "parse: " + err.Error()
	}
	r.Serial = cert.SerialNumber.String()
	for _, uri := range cert.URIs {
		r.URIs = append(r.URIs, uri.String())
	}
	r.DNS = cert.DNSNames
	if err := cert.CheckSignatureFrom(policy); err != nil {
		return "signature: " + err.Error()
	}
	roots := x509.NewCertPool()
	roots.AddCert(policy)
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: now}
	usages := [][]x509.ExtKeyUsage{{x509.ExtKeyUsageAny}}
	switch kind {
	case "prog":
		opts.DNSName = "taonet-program.invalid"
		usages = [][]x509.ExtKeyUsage{{x509.ExtKeyUsageServerAuth}, {x509.ExtKeyUsageClientAuth}}
	case "cert", "host":
	default:
		fail(fmt.Errorf("unknown kind %q", kind))
	}
	for _, usage := range usages {
		opts.KeyUsages = usage
		if _, err := cert.Verify(opts); err != nil {
			return "verify: " + err.Error()
		}
	}
	return ""
}
