package config

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"
)

var sizeRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?$`)

var sizeUnits = map[string]float64{
	"": 1, "B": 1,
	"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
	"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
}

// ParseSize reads "1MiB", "50MB", "1.5GiB" or plain bytes. KB, MB, GB are
// powers of 1000 and KiB, MiB, GiB powers of 1024, as on the tin.
func ParseSize(s string) (int64, error) {
	m := sizeRE.FindStringSubmatch(strings.TrimSpace(s))
	if m == nil {
		return 0, fmt.Errorf("size %q: write a number and a unit such as 1MiB or 50MB", s)
	}
	f, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, err
	}
	return int64(f * sizeUnits[m[2]]), nil
}

// FormatSize writes b in the largest binary unit that divides it.
func FormatSize(b int64) string {
	for _, u := range []struct {
		name string
		n    int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}} {
		if b >= u.n && b%u.n == 0 {
			return fmt.Sprintf("%d%s", b/u.n, u.name)
		}
	}
	return fmt.Sprintf("%dB", b)
}

// parseDuration is time.ParseDuration plus whole days (7d) and weeks (2w),
// which retention ages are usually written in.
func parseDuration(s string) (time.Duration, error) {
	for suffix, unit := range map[string]time.Duration{"d": 24 * time.Hour, "w": 7 * 24 * time.Hour} {
		if num, ok := strings.CutSuffix(s, suffix); ok {
			n, err := strconv.Atoi(num)
			if err != nil {
				return 0, fmt.Errorf("duration %q: write a whole number before %s", s, suffix)
			}
			return time.Duration(n) * unit, nil
		}
	}
	return time.ParseDuration(s)
}

// ParseRate reads a rate such as "50MB/s" or "800KiB/s" (the /s may be
// left out) as bytes per second, for the --rate-limit flags; "" and "0"
// are no limit.
func ParseRate(s string) (int64, error) {
	s = strings.TrimSpace(s)
	if s == "" || s == "0" {
		return 0, nil
	}
	b, err := ParseSize(strings.TrimSuffix(s, "/s"))
	if err != nil || b <= 0 {
		return 0, fmt.Errorf("rate %q: write bytes per second such as 50MB/s or 800KiB/s", s)
	}
	return b, nil
}
