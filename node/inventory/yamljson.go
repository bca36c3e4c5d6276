package inventory

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	yaml "go.yaml.in/yaml/v3"
)

// yamlToJSON converts one YAML document to JSON, keeping what a conversion
// through Go maps would hide: a mapping's duplicate keys stay, in order, so
// the policy decoder can report them instead of silently keeping one.
func yamlToJSON(doc []byte) ([]byte, error) {
	var n yaml.Node
	if err := yaml.Unmarshal(doc, &n); err != nil {
		return nil, err
	}
	// Every node writes at least a byte: a document with more nodes than
	// the budget, aliases expanded, is refused before any is written.
	if expandedNodes(&n, 0, map[*yaml.Node]int{}) > maxExpandedBytes {
		return nil, fmt.Errorf("larger than %d bytes once its aliases are expanded", maxExpandedBytes)
	}
	w := jsonWriter{budget: maxExpandedBytes}
	if err := w.write(&n, 0); err != nil {
		return nil, err
	}
	return w.b.Bytes(), nil
}

// maxExpandedBytes bounds a document's JSON form: aliases can make a small
// YAML document expand exponentially ("billion laughs").
const maxExpandedBytes = 16 << 20

// expandedNodes counts n's nodes with every alias expanded. memo holds the
// count of each node already counted, so an anchor that aliases repeat is
// walked once; the walk stops below maxDepth, which write refuses anyway.
func expandedNodes(n *yaml.Node, depth int, memo map[*yaml.Node]int) int {
	if c, ok := memo[n]; ok {
		return c
	}
	c := 1
	if depth <= maxDepth {
		if n.Kind == yaml.AliasNode && n.Alias != nil {
			c = expandedNodes(n.Alias, depth+1, memo)
		}
		for _, child := range n.Content {
			c = min(c+expandedNodes(child, depth+1, memo), maxExpandedBytes+1) // saturates: never wraps
		}
	}
	memo[n] = c
	return c
}

type jsonWriter struct {
	b      bytes.Buffer
	budget int
}

func (w *jsonWriter) write(n *yaml.Node, depth int) error {
	if depth > maxDepth {
		return errors.New("nested too deeply")
	}
	if w.b.Len() > w.budget {
		return fmt.Errorf("larger than %d bytes once its aliases are expanded", w.budget)
	}
	b := &w.b
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			b.WriteString("null")
			return nil
		}
		return w.write(n.Content[0], depth+1)
	case yaml.AliasNode:
		return w.write(n.Alias, depth+1)
	case yaml.MappingNode:
		b.WriteByte('{')
		for i := 0; i+1 < len(n.Content); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: a mapping key must be a scalar", k.Line)
			}
			key, _ := json.Marshal(k.Value)
			b.Write(key)
			b.WriteByte(':')
			if err := w.write(n.Content[i+1], depth+1); err != nil {
				return err
			}
		}
		b.WriteByte('}')
	case yaml.SequenceNode:
		b.WriteByte('[')
		for i, c := range n.Content {
			if i > 0 {
				b.WriteByte(',')
			}
			if err := w.write(c, depth+1); err != nil {
				return err
			}
		}
		b.WriteByte(']')
	case yaml.ScalarNode:
		var v any
		if err := n.Decode(&v); err != nil {
			return fmt.Errorf("line %d: %w", n.Line, err)
		}
		out, err := json.Marshal(v)
		if err != nil {
			// A YAML value without a JSON form (a non-finite float, a
			// timestamp...): keep its text.
			out, _ = json.Marshal(n.Value)
		}
		b.Write(out)
	default:
		b.WriteString("null")
	}
	return nil
}
