package sender

import "testing"

func TestCompressGate(t *testing.T) {
	tests := []struct {
		name      string
		wire, raw int
		skips     int // chunks sent uncompressed after this observation
	}{
		{"text shrinks a lot", 250, 1000, 0},
		{"just worth it", 969, 1000, 0},
		{"3% saving is not worth it", 970, 1000, 15},
		{"random data", 1000, 1000, 15},
		{"grew", 1010, 1000, 15},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var g compressGate
			if !g.should() {
				t.Fatal("a new gate skips compression")
			}
			g.observe(tc.wire, tc.raw)
			skipped := 0
			for i := 0; i < 40 && !g.should(); i++ {
				skipped++
			}
			if skipped != tc.skips {
				t.Errorf("skipped %d chunks, want %d", skipped, tc.skips)
			}
			// After the pause it probes again and keeps compressing.
			for i := 0; i < 5; i++ {
				if !g.should() {
					t.Fatalf("chunk %d after the pause skipped", i)
				}
			}
		})
	}
}

// The probe after a pause that is incompressible again pauses again.
func TestCompressGateProbeCycle(t *testing.T) {
	var g compressGate
	g.observe(1000, 1000)
	for i := 0; i < 15; i++ {
		if g.should() {
			t.Fatalf("chunk %d of the pause compressed", i)
		}
	}
	if !g.should() {
		t.Fatal("no probe after the pause")
	}
	g.observe(1000, 1000)
	skipped := 0
	for i := 0; i < 40 && !g.should(); i++ {
		skipped++
	}
	if skipped != 15 {
		t.Errorf("after a second bad probe skipped %d, want 15", skipped)
	}
}
