// Package owner tells which lab process made a lab's leftovers (network namespaces, bridges, cgroups) and whether
// that very process is gone, across PID reuse: only what a dead lab of this project made is ever cleaned up.
package owner

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Owner identifies a process across PID reuse: its id, when it started (clock ticks since boot, /proc/PID/stat
// field 22) and the boot it started in. A PID alone is reused; the triple is not.
type Owner struct {
	PID    int    `json:"pid"`
	Start  uint64 `json:"startTicks"`
	BootID string `json:"bootID"`
}

// Self is this process.
func Self() (Owner, error) { return Of(os.Getpid()) }

// Of reads the identity of a running process.
func Of(pid int) (Owner, error) {
	boot, err := bootID()
	if err != nil {
		return Owner{}, err
	}
	start, err := processStart(pid)
	if err != nil {
		return Owner{}, err
	}
	return Owner{PID: pid, Start: start, BootID: boot}, nil
}

// Alive says whether the very process o names still runs (not another one that got its PID).
func (o Owner) Alive() bool {
	if o.PID <= 0 {
		return false
	}
	now, err := Of(o.PID)
	return err == nil && now == o
}

func bootID() (string, error) {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(data)), nil
}

func processStart(pid int) (uint64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces or parentheses itself.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	fields := strings.Fields(string(data[i+1:]))
	// fields[0] is field 3 (state); starttime is field 22.
	if len(fields) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	return strconv.ParseUint(fields[19], 10, 64)
}

// MarkerDir holds one file per running lab network, named by its PID, with the Owner that made it: only
// bridges and namespaces whose PID has a marker were made by a lab of this project, and only those whose owner is
// gone are removed. It is on /run, which a reboot empties together with the network namespaces.
const MarkerDir = "/run/rollout-lab/labs"

func markerFile(pid int) string { return filepath.Join(MarkerDir, strconv.Itoa(pid)+".json") }

// WriteMarker records o as the maker of the lab objects named by its PID.
func WriteMarker(o Owner) error {
	if err := os.MkdirAll(MarkerDir, 0o700); err != nil {
		return err
	}
	data, err := json.Marshal(o)
	if err != nil {
		return err
	}
	return os.WriteFile(markerFile(o.PID), data, 0o600)
}

// RemoveMarker removes pid's marker, if any.
func RemoveMarker(pid int) error {
	if err := os.Remove(markerFile(pid)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// ReadMarker returns the owner recorded for pid, and false when no lab of this project recorded one.
func ReadMarker(pid int) (Owner, bool) {
	data, err := os.ReadFile(markerFile(pid))
	if err != nil {
		return Owner{}, false
	}
	var o Owner
	if json.Unmarshal(data, &o) != nil || o.PID != pid {
		return Owner{}, false
	}
	return o, true
}

// Stale says whether the lab of process pid made these objects and is gone: only names whose PID carries a marker
// of this project are ever removed, and only once that very process (PID and start time) has ended.
func Stale(pid int) bool {
	o, ok := ReadMarker(pid)
	return ok && !o.Alive()
}

// Gone says whether the lab of process pid is gone: its marker says it ended, or with no marker no process has its
// PID any more (a live lab always has a marker; a reused PID keeps its leftovers, harmlessly).
func Gone(pid int) bool {
	if Stale(pid) {
		return true
	}
	_, marked := ReadMarker(pid)
	_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
	return !marked && errors.Is(err, fs.ErrNotExist)
}
