package schematest

import (
	"fmt"
	"maps"
	"reflect"
	"slices"
)

// Incompatible lists how schema next breaks what a consumer written
// against schema prev relies on, each at a JSON pointer into the schema:
// a field that became required, a field removed, a type, enum or bound
// narrowed, a pattern or constant changed, extra fields refused where
// they were allowed, a $ref pointed elsewhere. Adding an optional field,
// widening a type or relaxing a bound is compatible. Both are decoded
// JSON (maps, slices, strings, float64s, bools).
func Incompatible(prev, next any) []string {
	var out []string
	compare("", prev, next, &out)
	return out
}

func compare(at string, prev, next any, out *[]string) {
	p, pok := prev.(map[string]any)
	n, nok := next.(map[string]any)
	if !pok || !nok {
		if !reflect.DeepEqual(prev, next) {
			*out = append(*out, fmt.Sprintf("%s: changed from %v to %v", at, prev, next))
		}
		return
	}
	for _, key := range slices.Sorted(maps.Keys(p)) {
		pv, nv, kept := p[key], n[key], hasKey(n, key)
		here := at + "/" + key
		switch key {
		case "required":
			if added := minus(stringsOf(nv), stringsOf(pv)); len(added) > 0 {
				*out = append(*out, fmt.Sprintf("%s: %v became required", here, added))
			}
		case "properties", "$defs", "patternProperties":
			pm, _ := pv.(map[string]any)
			nm, _ := nv.(map[string]any)
			for _, name := range slices.Sorted(maps.Keys(pm)) {
				if _, ok := nm[name]; !ok {
					*out = append(*out, fmt.Sprintf("%s/%s: removed", here, name))
					continue
				}
				compare(here+"/"+name, pm[name], nm[name], out)
			}
		case "type":
			if removed := minus(types(pv), types(nv)); kept && len(removed) > 0 {
				*out = append(*out, fmt.Sprintf("%s: no longer allows %v", here, removed))
			}
		case "enum":
			if removed := minusAny(asSlice(pv), asSlice(nv)); kept && len(removed) > 0 {
				*out = append(*out, fmt.Sprintf("%s: no longer allows %v", here, removed))
			}
		case "minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties":
			if kept && number(nv) > number(pv) {
				*out = append(*out, fmt.Sprintf("%s: raised from %v to %v", here, pv, nv))
			}
		case "maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties":
			if kept && number(nv) < number(pv) {
				*out = append(*out, fmt.Sprintf("%s: lowered from %v to %v", here, pv, nv))
			}
		case "oneOf", "anyOf":
			// Alternatives may be appended; each one released is compared
			// with the one at its place.
			ps, ns := asSlice(pv), asSlice(nv)
			if kept && len(ns) < len(ps) {
				*out = append(*out, fmt.Sprintf("%s: %d alternatives removed", here, len(ps)-len(ns)))
			}
			for i := range min(len(ps), len(ns)) {
				compare(fmt.Sprintf("%s/%d", here, i), ps[i], ns[i], out)
			}
		case "additionalProperties":
			if allowed(pv) && kept && !allowed(nv) {
				*out = append(*out, fmt.Sprintf("%s: extra fields are refused where they were allowed", here))
			} else if kept {
				compare(here, pv, nv, out)
			}
		case "title", "description", "$schema", "$comment", "examples", "default", "format":
			// Words, not constraints (format is not asserted by default).
		default: // pattern, const, $ref, items, oneOf, not, …: must not change
			if !kept {
				continue // a constraint dropped widens what is allowed
			}
			compare(here, pv, nv, out)
		}
	}
	added(at, p, n, out)
}

// added reports the keywords next has and prev had not: a constraint
// added narrows what is allowed; words and optional fields do not.
func added(at string, p, n map[string]any, out *[]string) {
	for _, key := range slices.Sorted(maps.Keys(n)) {
		if !hasKey(p, key) {
			switch key {
			case "required", "properties", "title", "description", "$comment", "examples", "default", "format", "$defs":
				if key == "required" {
					if req := stringsOf(n[key]); len(req) > 0 {
						*out = append(*out, fmt.Sprintf("%s/required: %v became required", at, req))
					}
				}
			default:
				*out = append(*out, fmt.Sprintf("%s/%s: a constraint was added", at, key))
			}
		}
	}
}

func hasKey(m map[string]any, k string) bool { _, ok := m[k]; return ok }

func stringsOf(v any) []string {
	var out []string
	for _, x := range asSlice(v) {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// types is a "type" keyword as a set; none means any.
func types(v any) []string {
	if s, ok := v.(string); ok {
		return []string{s}
	}
	return stringsOf(v)
}

func asSlice(v any) []any {
	s, _ := v.([]any)
	return s
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return out
}

func minusAny(a, b []any) []any {
	var out []any
	for _, x := range a {
		if !slices.ContainsFunc(b, func(y any) bool { return reflect.DeepEqual(x, y) }) {
			out = append(out, x)
		}
	}
	return out
}

func number(v any) float64 {
	f, _ := v.(float64)
	return f
}

// allowed reports whether an additionalProperties value lets extra fields
// in (absent and true do; false does not; a schema constrains them).
func allowed(v any) bool {
	b, isBool := v.(bool)
	return !isBool || b
}
