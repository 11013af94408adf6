// Command protected_go writes protected_objects messages as the original CloudProxy
// (Go) writes them, for taonet's golden vectors: tests/vectors/protected_objects_go.json.
//
//	cd tests/vectors/protected_go && go run main.go > ../protected_objects_go.json
//
// The original's CreateObject stores not_before/not_after as notBefore.String() (Go's
// "2006-01-02 15:04:05.999999999 -0700 MST" layout, with a " m=+..." monotonic reading
// when the time came from time.Now(), and "+0530 +0530" for a zone without a name) and
// proto.Marshal's the messages. Go's protobuf module is not available offline, so the
// proto2 fields of protected_objects.proto are encoded here by hand, in field-number
// order as proto.Marshal writes them: a string or bytes or message field is
// tag (number<<3|2) + varint length + bytes; obj_epoch (int32) is tag (2<<3|0) + varint,
// a negative int32 sign-extended to ten bytes. Times from time.Now() differ on every
// run: the file stores one run's output and each entry says what it decodes to.
package main

import (
	"encoding/hex"
	"encoding/json"
	"os"
	"time"
)

func varint(v uint64) []byte {
	var out []byte
	for v >= 0x80 {
		out = append(out, byte(v)|0x80)
		v >>= 7
	}
	return append(out, byte(v))
}

func ld(field int, payload []byte) []byte {
	out := varint(uint64(field<<3 | 2))
	out = append(out, varint(uint64(len(payload)))...)
	return append(out, payload...)
}

func int32Field(field int, v int32) []byte {
	// proto int32: a negative value is sign-extended to 64 bits (ten bytes).
	return append(varint(uint64(field<<3)), varint(uint64(int64(v)))...)
}

func objectID(name string, epoch int32) []byte {
	return append(ld(1, []byte(name)), int32Field(2, epoch)...)
}

type objectSpec struct {
	name      string
	epoch     int32
	typ       string
	status    string
	notBefore time.Time
	notAfter  time.Time
	value     []byte
}

// createObject encodes what the original's CreateObject builds and proto.Marshal writes.
func createObject(o objectSpec) []byte {
	out := ld(1, objectID(o.name, o.epoch))
	out = append(out, ld(2, []byte(o.typ))...)
	out = append(out, ld(3, []byte(o.status))...)
	out = append(out, ld(4, []byte(o.notBefore.String()))...)
	out = append(out, ld(5, []byte(o.notAfter.String()))...)
	return append(out, ld(6, o.value)...)
}

type timeOut struct {
	Text    string `json:"text"`
	UnixSec int64  `json:"unix_seconds"`
	Nanos   int    `json:"nanoseconds"`
}

type entry struct {
	Name        string             `json:"name"`
	Message     string             `json:"message"`
	Hex         string             `json:"hex"`
	Description string             `json:"description"`
	Object      map[string]any     `json:"object,omitempty"`
	Times       map[string]timeOut `json:"times,omitempty"`
	Error       string             `json:"error,omitempty"`
}

func tOut(t time.Time) timeOut {
	return timeOut{t.String(), t.Unix(), t.Nanosecond()}
}

func objectEntry(name, desc string, o objectSpec) entry {
	return entry{
		Name:        name,
		Message:     "object_message",
		Hex:         hex.EncodeToString(createObject(o)),
		Description: desc,
		Object: map[string]any{
			"name": o.name, "epoch": o.epoch, "type": o.typ, "status": o.status,
			"value_hex": hex.EncodeToString(o.value),
		},
		Times: map[string]timeOut{"not_before": tOut(o.notBefore), "not_after": tOut(o.notAfter)},
	}
}

func must(loc *time.Location, err error) *time.Location {
	if err != nil {
		panic(err)
	}
	return loc
}

func main() {
	la := must(time.LoadLocation("America/Los_Angeles"))
	sp := must(time.LoadLocation("America/Sao_Paulo"))
	ber := must(time.LoadLocation("Europe/Berlin"))
	india := time.FixedZone("", 5*3600+1800)
	mono := time.Now() // carries a monotonic reading: String() adds " m=+..."
	year := 365 * 24 * time.Hour

	var entries []entry
	entries = append(entries, objectEntry("go_now_monotonic",
		"as the original's tests: notBefore := time.Now(); notAfter := notBefore.Add(365*24h); both print ' m=+...'",
		objectSpec{"/jlm/file/file1", 1, "file", "active", mono, mono.Add(year), []byte{1, 2, 3, 4, 5, 6, 7, 8}}))
	entries = append(entries, objectEntry("go_named_zones",
		"a key valid from 10:20:30.123456789 PST to a time in Berlin (CET), nanoseconds kept",
		objectSpec{"/jlm/key/key1", 2, "key", "retired",
			time.Date(2016, 3, 1, 10, 20, 30, 123456789, la),
			time.Date(2017, 3, 1, 10, 20, 30, 1, ber),
			[]byte("0123456789abcdef0123456789abcdef")}))
	entries = append(entries, objectEntry("go_unnamed_and_numeric_zones",
		"a zone without a name prints its offset twice (+0530 +0530); Sao Paulo's tzdata name is -03",
		objectSpec{"/jlm/file/zones", 7, "file", "revoked",
			time.Date(2020, 1, 2, 3, 4, 5, 0, india),
			time.Date(2030, 6, 7, 8, 9, 10, 500000000, sp),
			[]byte{}}))
	entries = append(entries, objectEntry("go_zero_time_and_in",
		"Go's zero time (0001-01-01 00:00:00 +0000 UTC) and a time.Now() moved with In() (which drops the monotonic reading)",
		objectSpec{"/jlm/file/zero", 3, "file", "inactive", time.Time{}, mono.In(ber).Add(time.Hour), []byte("v")}))

	neg := append(ld(1, []byte("/jlm/file/file1")), int32Field(2, -1)...)
	entries = append(entries, entry{
		Name: "go_negative_epoch", Message: "object_id_message", Hex: hex.EncodeToString(neg),
		Description: "ObjEpoch int32(-1): Go writes ten bytes; taonet refuses the epoch",
		Error:       "outside",
	})
	zero := append(ld(1, []byte("/jlm/file/file1")), int32Field(2, 0)...)
	entries = append(entries, entry{
		Name: "go_zero_epoch", Message: "object_id_message", Hex: hex.EncodeToString(zero),
		Description: "ObjEpoch 0 (the original's 'any epoch' in lookups): refused as an id",
		Error:       "outside",
	})

	node := append(ld(1, objectID("/jlm/file/file1", 1)), ld(2, objectID("/jlm/key/key1", 2))...)
	entries = append(entries, entry{
		Name: "go_node", Message: "node_message", Hex: hex.EncodeToString(node),
		Description: "MakeNode(\"/jlm/key/key1\", 2, \"/jlm/file/file1\", 1)",
		Object:      map[string]any{"protected": []any{"/jlm/file/file1", 1}, "protector": []any{"/jlm/key/key1", 2}},
	})
	blob := []byte("the original's AES-CTR+HMAC output goes here")
	po := append(ld(1, objectID("/jlm/file/file1", 1)), ld(2, objectID("/jlm/key/key1", 2))...)
	po = append(po, ld(3, blob)...)
	entries = append(entries, entry{
		Name: "go_protected_object", Message: "protected_object_message", Hex: hex.EncodeToString(po),
		Description: "MakeProtectedObject's fields (the blob is opaque here)",
		Object: map[string]any{
			"protected": []any{"/jlm/file/file1", 1}, "protector": []any{"/jlm/key/key1", 2},
			"blob_hex": hex.EncodeToString(blob),
		},
	})
	var nodeStore, poStore []byte
	nodeStore = append(nodeStore, ld(1, node)...)
	nodeStore = append(nodeStore, ld(1, ld(1, objectID("/jlm/key/key1", 2)))...)
	poStore = append(poStore, ld(1, po)...)
	entries = append(entries, entry{
		Name: "go_node_store", Message: "node_store_message", Hex: hex.EncodeToString(nodeStore),
		Description: "SaveNodes of two nodes, the second without a protector",
		Object:      map[string]any{"count": 2},
	})
	entries = append(entries, entry{
		Name: "go_protected_object_store", Message: "protected_object_store_message", Hex: hex.EncodeToString(poStore),
		Description: "SaveProtectedObjects of one protected object",
		Object:      map[string]any{"count": 1},
	})
	var objStore []byte
	for _, e := range entries[:2] {
		raw, _ := hex.DecodeString(e.Hex)
		objStore = append(objStore, ld(1, raw)...)
	}
	entries = append(entries, entry{
		Name: "go_object_store", Message: "object_store_message", Hex: hex.EncodeToString(objStore),
		Description: "SaveObjects of the first two objects above",
		Object:      map[string]any{"count": 2},
	})

	out := map[string]any{
		"description": "protected_objects messages as the original CloudProxy (Go) writes them, " +
			"made by tests/vectors/protected_go/main.go with " + goVersion() + "; times from Go's Time.String()",
		"entries": entries,
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", " ")
	if err := enc.Encode(out); err != nil {
		panic(err)
	}
}
