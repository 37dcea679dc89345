// Command kstatus prints the kstatus verdict (sigs.k8s.io/cli-utils/pkg/kstatus/status,
// the computation Flux's health checks run) for Kubernetes objects given as JSON.
//
// Usage:
//
//	kstatus [FILE]   # FILE, or stdin when absent or "-"
//
// The input is one or more JSON values: objects, arrays of objects, or lists
// (an object with an "items" array, as `kubectl get -o json` prints). For
// every object one JSON line is written to stdout:
//
//	{"status":"Current","message":"Deployment is available. Replicas: 1"}
//
// status is one of Current, InProgress, Failed, Terminating, NotFound, Unknown.
// An object kstatus cannot evaluate yields status Unknown with the error as its
// message. Unreadable input exits 2 with the reason on stderr.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type verdict struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "kstatus: %v\n", err)
		os.Exit(2)
	}
}

func run(args []string, stdin io.Reader, stdout io.Writer) error {
	in := stdin
	switch {
	case len(args) > 1:
		return errors.New("usage: kstatus [FILE]")
	case len(args) == 1 && args[0] != "-":
		f, err := os.Open(args[0])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	out := bufio.NewWriter(stdout)
	defer out.Flush()
	enc := json.NewEncoder(out)
	dec := json.NewDecoder(in)
	dec.UseNumber()
	for n := 1; ; n++ {
		var value any
		if err := dec.Decode(&value); err == io.EOF {
			return nil
		} else if err != nil {
			return fmt.Errorf("input value %d: %w", n, err)
		}
		objects, err := flatten(value)
		if err != nil {
			return fmt.Errorf("input value %d: %w", n, err)
		}
		for _, obj := range objects {
			if err := enc.Encode(compute(obj)); err != nil {
				return err
			}
		}
	}
}

// flatten turns one decoded JSON value into the objects it holds.
func flatten(value any) ([]map[string]any, error) {
	switch v := value.(type) {
	case []any:
		var all []map[string]any
		for i, item := range v {
			objects, err := flatten(item)
			if err != nil {
				return nil, fmt.Errorf("[%d]: %w", i, err)
			}
			all = append(all, objects...)
		}
		return all, nil
	case map[string]any:
		if items, ok := v["items"].([]any); ok {
			if _, hasKind := v["kind"]; !hasKind || isList(v) {
				return flatten(items)
			}
		}
		return []map[string]any{v}, nil
	default:
		return nil, fmt.Errorf("expected a JSON object, array or list, got %T", value)
	}
}

func isList(v map[string]any) bool {
	kind, _ := v["kind"].(string)
	return len(kind) >= 4 && kind[len(kind)-4:] == "List"
}

func compute(obj map[string]any) verdict {
	// Numbers arrive as json.Number; unstructured wants int64/float64.
	u := &unstructured.Unstructured{Object: normalize(obj).(map[string]any)}
	result, err := status.Compute(u)
	if err != nil {
		return verdict{Status: string(status.UnknownStatus), Message: err.Error()}
	}
	return verdict{Status: string(result.Status), Message: result.Message}
}

func normalize(value any) any {
	switch v := value.(type) {
	case map[string]any:
		for k, item := range v {
			v[k] = normalize(item)
		}
		return v
	case []any:
		for i, item := range v {
			v[i] = normalize(item)
		}
		return v
	case json.Number:
		if i, err := v.Int64(); err == nil {
			return i
		}
		f, _ := v.Float64()
		return f
	default:
		return value
	}
}
