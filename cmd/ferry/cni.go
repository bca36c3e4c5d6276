package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/ferrymesh/ferry/node/cni"
)

// commandArgs returns the arguments run dispatches on, given os.Args: the
// container runtime runs CNI plugins by their type, with no arguments, so
// this binary installed as ferry-cni runs "ferry cni".
func commandArgs(argv []string) []string {
	if len(argv) > 0 && filepath.Base(argv[0]) == cni.PluginType {
		return append([]string{"cni"}, argv[1:]...)
	}
	return argv[1:]
}

func runCNI(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "install":
			return runCNIInstall(args[1:], stdout, stderr)
		case "uninstall":
			return runCNIUninstall(args[1:], stdout, stderr)
		}
	}
	fs := newFlagSet("cni", stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: ferry cni                      the CNI plugin: CNI_* environment, network configuration on stdin\n"+
			"       ferry cni install [flags]      chain ferry-cni onto this node's CNI configuration\n"+
			"       ferry cni uninstall [flags]    take it out again")
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	return cni.RunPlugin(ctx, stdout, stderr, "ferry-cni "+version+": Ferry's chained CNI plugin, run by the container runtime (ferry cni -h)")
}

func runCNIInstall(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cni install", stderr)
	confDir := fs.String("cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	binDir := fs.String("cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	self := fs.String("binary", "", "the ferry binary to install (default: this one)")
	var conf cni.Conf
	conf.RegisterFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	if *self == "" {
		var err error
		if *self, err = os.Executable(); err != nil {
			return fmt.Errorf("cni install: %w", err)
		}
	}
	if err := cni.Install(*confDir, *binDir, *self, conf); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "installed %s and chained it onto the network configuration in %s\n", filepath.Join(*binDir, cni.PluginType), *confDir)
	return nil
}

func runCNIUninstall(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("cni uninstall", stderr)
	confDir := fs.String("cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	binDir := fs.String("cni-bin-dir", "/opt/cni/bin", "the node's CNI plugin directory")
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := cni.Uninstall(*confDir, *binDir); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed %s and its entries in %s\n", filepath.Join(*binDir, cni.PluginType), *confDir)
	return nil
}
