package fileutil

import (
	"os"
	"path/filepath"
	"testing"
)

func TestCopyNewCopiesAndNeverOverwrites(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	if err := os.WriteFile(src, []byte("moo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CopyNew(src, dst, 0o700); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(dst)
	info, _ := os.Stat(dst)
	if err != nil || string(data) != "moo" || info.Mode().Perm() != 0o700 {
		t.Errorf("copy %q %v %v", data, info.Mode(), err)
	}
	if err := CopyNew(src, dst, 0o700); err == nil {
		t.Error("an existing file was overwritten")
	}
}
