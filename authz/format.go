package authz

import "strconv"

// sprintf is the small subset of fmt.Sprintf this package needs (%s, %q,
// %d, %v, %%): fmt imports os, which authz must not depend on.
func sprintf(format string, args ...any) string {
	b := make([]byte, 0, len(format)+32)
	for i := 0; i < len(format); i++ {
		c := format[i]
		if c != '%' || i+1 == len(format) {
			b = append(b, c)
			continue
		}
		i++
		verb := format[i]
		if verb == '%' {
			b = append(b, '%')
			continue
		}
		if len(args) == 0 {
			b = append(b, "%!"...)
			b = append(b, verb)
			continue
		}
		a := args[0]
		args = args[1:]
		var s string
		switch v := a.(type) {
		case string:
			s = v
		case int:
			s = strconv.Itoa(v)
		case uint16:
			s = strconv.Itoa(int(v))
		case error:
			s = v.Error()
		case interface{ String() string }:
			s = v.String()
		default:
			s = "?"
		}
		if verb == 'q' {
			b = strconv.AppendQuote(b, s)
		} else {
			b = append(b, s...)
		}
	}
	return string(b)
}
