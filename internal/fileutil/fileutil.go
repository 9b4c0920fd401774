// Package fileutil holds file operations several packages need.
package fileutil

import (
	"io"
	"os"
)

// CopyNew copies src to dst, which must not exist yet, created with mode perm.
func CopyNew(src, dst string, perm os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, perm)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
