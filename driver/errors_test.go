package driver

import (
	"errors"
	"fmt"
	"testing"
)

func TestPermanent(t *testing.T) {
	base := errors.New("no space left on device")
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"plain", base, false},
		{"marked", Permanent(base), true},
		{"marked and wrapped", fmt.Errorf("receive into /t: %w", Permanent(base)), true},
		{"wrapped twice", fmt.Errorf("job: %w", fmt.Errorf("receive: %w", Permanent(base))), true},
		{"joined", errors.Join(errors.New("cleanup"), Permanent(base)), true},
		{"only mentioned", fmt.Errorf("was permanent: %v", Permanent(base)), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := IsPermanent(tc.err); got != tc.want {
				t.Errorf("IsPermanent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
	if Permanent(nil) != nil {
		t.Error("Permanent(nil) is not nil")
	}
	p := Permanent(base)
	if !errors.Is(p, base) || p.Error() != base.Error() {
		t.Errorf("Permanent hides its cause: %v", p)
	}
}
