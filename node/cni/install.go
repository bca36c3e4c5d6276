package cni

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// ErrNoConfig is returned by Install when the configuration directory holds
// no network configuration: the node's network plugin has not written its
// own yet. Retry later.
var ErrNoConfig = errors.New("cni: no network configuration to chain onto")

// confExts are the extensions the container runtime reads network
// configurations from, as libcni's ConfFiles.
var confExts = []string{".conf", ".conflist", ".json"}

// tmpPattern names our temporary files; their ".tmp" extension keeps the
// runtime from reading a half-written configuration.
const tmpPattern = ".ferry-cni-*.tmp"

// Install chains ferry-cni onto the node's network configuration, as
// istio-cni's installer does. It copies selfPath (the running ferry binary)
// into binDir as ferry-cni, then adds {"type": "ferry-cni", ...conf} as the
// last plugin of the primary configuration in confDir: the lexically first
// *.conf, *.conflist or *.json file, the one the runtime uses. A single-plugin
// configuration is converted to a .conflist (the old file is removed). Every
// write is a temporary file renamed into place, keeping the file's mode, so
// the runtime never reads half a file.
//
// Install is idempotent: an existing ferry-cni entry is updated where it is,
// and a file already as wanted is not rewritten. It returns ErrNoConfig if
// confDir is missing or holds no configuration; the caller retries, and runs
// Install again when the network plugin rewrites its file.
func Install(confDir, binDir, selfPath string, conf Conf) error {
	path, err := primaryConf(confDir)
	if err != nil {
		return err
	}
	ed, err := addEntry(path, conf)
	if err != nil {
		return err
	}
	// The binary first: the runtime must never find an entry without it.
	if err := copyBinary(selfPath, filepath.Join(binDir, PluginType)); err != nil {
		return err
	}
	return ed.apply()
}

// Uninstall takes out what Install put in: every ferry-cni entry from the
// configuration lists in confDir, and binDir/ferry-cni. It leaves everything
// else as it is, including a configuration Install converted to a list (a
// list of the one plugin means the same). Missing files and directories are
// not errors.
func Uninstall(confDir, binDir string) error {
	files, err := confFiles(confDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	var errs []error
	for _, path := range files {
		if err := removeEntry(path); err != nil {
			errs = append(errs, err)
		}
	}
	for _, dir := range []string{confDir, binDir} {
		tmps, _ := filepath.Glob(filepath.Join(dir, tmpPattern))
		for _, t := range tmps {
			errs = append(errs, ignoreNotExist(os.Remove(t)))
		}
	}
	errs = append(errs, ignoreNotExist(os.Remove(filepath.Join(binDir, PluginType))))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cni: uninstall: %w", err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// confFiles lists dir's network configurations in the runtime's order.
func confFiles(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return nil, fmt.Errorf("cni: read configuration directory: %w", err)
	}
	var files []string
	for _, e := range ents {
		if !e.IsDir() && slices.Contains(confExts, filepath.Ext(e.Name())) {
			files = append(files, filepath.Join(dir, e.Name()))
		}
	}
	return files, nil
}

// primaryConf returns the configuration the runtime uses: the first.
func primaryConf(dir string) (string, error) {
	files, err := confFiles(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("%w: %s does not exist", ErrNoConfig, dir)
	}
	if err != nil {
		return "", err
	}
	if len(files) == 0 {
		return "", fmt.Errorf("%w in %s", ErrNoConfig, dir)
	}
	return files[0], nil
}

// readJSON reads a configuration file as generic JSON, keeping numbers
// exactly as written, and returns it with the file's permission bits.
func readJSON(path string) (map[string]any, fs.FileMode, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, 0, fmt.Errorf("cni: %w", err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, 0, fmt.Errorf("cni: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return nil, 0, fmt.Errorf("cni: parse %s: %w", path, err)
	}
	if m == nil {
		return nil, 0, fmt.Errorf("cni: parse %s: not a JSON object", path)
	}
	return m, fi.Mode().Perm(), nil
}

// pluginList returns m's "plugins", and false if m is a single plugin's
// configuration rather than a list.
func pluginList(path string, m map[string]any) ([]any, bool, error) {
	raw, ok := m["plugins"]
	if !ok {
		return nil, false, nil
	}
	plugins, ok := raw.([]any)
	if !ok {
		return nil, true, fmt.Errorf("cni: %s: \"plugins\" is not a list", path)
	}
	return plugins, true, nil
}

func isOurs(plugin any) bool {
	p, ok := plugin.(map[string]any)
	return ok && p["type"] == PluginType
}

// entry is our plugin's entry in a configuration list.
func entry(conf Conf) (map[string]any, error) {
	b, err := json.Marshal(conf)
	if err != nil {
		return nil, err
	}
	e := map[string]any{}
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, err
	}
	e["type"] = PluginType
	return e, nil
}

// edit is a planned change to one configuration file.
type edit struct {
	path string      // the file to write
	old  string      // a file to remove once path is written (a converted .conf), or ""
	data []byte      // path's new content; nil if the file is already as wanted
	perm fs.FileMode // path's permission bits
}

// addEntry plans putting our entry into the list at path, converting a
// single configuration to a list.
func addEntry(path string, conf Conf) (edit, error) {
	m, perm, err := readJSON(path)
	if err != nil {
		return edit{}, err
	}
	plugins, isList, err := pluginList(path, m)
	if err != nil {
		return edit{}, err
	}
	ed := edit{path: path, perm: perm}
	if !isList {
		// As istio-cni does: the single configuration becomes the list's
		// first plugin, and the list takes its name and version.
		ed.path, ed.old = strings.TrimSuffix(path, filepath.Ext(path))+".conflist", path
		if _, err := os.Lstat(ed.path); err == nil {
			return edit{}, fmt.Errorf("cni: convert %s to a list: %s exists", path, ed.path)
		}
		plugins = []any{m}
		m = map[string]any{"cniVersion": m["cniVersion"], "name": m["name"]}
	}
	e, err := entry(conf)
	if err != nil {
		return edit{}, fmt.Errorf("cni: %w", err)
	}
	before, _ := json.Marshal(plugins)
	if i := slices.IndexFunc(plugins, isOurs); i >= 0 {
		plugins[i] = e
		// Drop any duplicate after the first.
		plugins = slices.Concat(plugins[:i+1], slices.DeleteFunc(plugins[i+1:], isOurs))
	} else {
		plugins = append(plugins, e)
	}
	m["plugins"] = plugins
	if after, _ := json.Marshal(plugins); isList && bytes.Equal(before, after) {
		return ed, nil // already as wanted: leave the file, and its watchers, alone
	}
	if ed.data, err = encodeJSON(path, m); err != nil {
		return edit{}, err
	}
	return ed, nil
}

// apply carries out ed.
func (ed edit) apply() error {
	if ed.data == nil {
		return nil
	}
	if err := writeAtomic(ed.path, bytes.NewReader(ed.data), ed.perm); err != nil {
		return err
	}
	if ed.old != "" {
		if err := os.Remove(ed.old); err != nil {
			return fmt.Errorf("cni: remove %s converted to %s: %w", ed.old, ed.path, err)
		}
	}
	return nil
}

// removeEntry takes our entries out of the list at path, if it is a list
// and has any. Files that are not readable JSON are not ours, and are left.
func removeEntry(path string) error {
	m, perm, err := readJSON(path)
	if err != nil {
		return nil
	}
	plugins, isList, err := pluginList(path, m)
	if err != nil || !isList || !slices.ContainsFunc(plugins, isOurs) {
		return nil
	}
	m["plugins"] = slices.DeleteFunc(plugins, isOurs)
	b, err := encodeJSON(path, m)
	if err != nil {
		return err
	}
	return writeAtomic(path, bytes.NewReader(b), perm)
}

func encodeJSON(path string, m map[string]any) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("cni: encode %s: %w", path, err)
	}
	return append(b, '\n'), nil
}

// writeAtomic writes r to path through a temporary file in the same
// directory, renamed into place once complete and synced.
func writeAtomic(path string, r io.Reader, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), tmpPattern)
	if err != nil {
		return fmt.Errorf("cni: write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
			err = fmt.Errorf("cni: write %s: %w", path, err)
		}
	}()
	if _, err := io.Copy(f, r); err != nil {
		return err
	}
	if err := f.Chmod(perm); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}

// copyBinary copies the binary at src to dst, executable.
func copyBinary(src, dst string) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("cni: install binary: %w", err)
	}
	defer f.Close()
	return writeAtomic(dst, f, 0o755)
}
