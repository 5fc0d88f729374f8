package main

import (
	"github.com/spf13/cobra"

	"github.com/snapjet/snapjet/internal/broker"
)

func serverCmd(g *globals) *cobra.Command {
	var c broker.ServerConfig
	cmd := &cobra.Command{
		Use:   "server [--store DIR] [--listen ADDR] [--domain NAME] [--leaf-listen ADDR | --hub URL]",
		Short: "Run the embedded NATS server with JetStream: standalone, as a hub, or as a site node of a hub, until SIGTERM",
		Long: `Runs the embedded NATS server with JetStream on --store until SIGTERM.

Standalone (the default): senders and receivers meet here.
Hub: --domain hub --leaf-listen ADDR accepts the links of site nodes.
Site node: --domain SITE --hub URL dials the hub (nats-leaf:// or tls://) as
a leaf node and keeps a JetStream of its own in domain SITE; local clients
reach the hub's JetStream through domain --hub-domain (default hub).

--server-tls-cert and --server-tls-key put TLS on the client and leaf
listeners; with --server-tls-ca every peer must show a certificate that CA
signed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c.Store, c.Listen, c.Log = g.store, g.listen, g.log
			limitMemoryTo(serverMemoryLimit)
			srv, err := broker.StartServer(c)
			if err != nil {
				return err
			}
			if c.Hub != "" {
				go srv.WatchHub(cmd.Context(), c.Hub, g.log)
			}
			<-cmd.Context().Done()
			srv.Stop()
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&c.MonitorListen, "monitor-listen", "", "serve the server's HTTP monitoring (/varz, /jsz, /connz, /leafz) on HOST:PORT; unauthenticated, keep it on localhost")
	f.StringVar(&c.Domain, "domain", "", "JetStream domain of this server (a hub and each site need their own)")
	f.StringVar(&c.LeafListen, "leaf-listen", "", "accept site nodes (leaf connections) on HOST:PORT: the hub's role")
	f.StringVar(&c.Hub, "hub", "", "URL of the hub's leaf listener (nats-leaf://HOST:7422 or tls://HOST:7422): run as a site node")
	f.StringVar(&c.HubDomain, "hub-domain", broker.DefaultHubDomain, "JetStream domain of the hub")
	f.StringVar(&c.HubCreds, "hub-creds", "", "creds file for the link to the hub")
	f.StringVar(&c.HubTLSCA, "hub-tls-ca", "", "CA certificate file (PEM) that signed the hub's certificate")
	f.StringVar(&c.HubTLSCert, "hub-tls-cert", "", "certificate file (PEM) this site shows the hub")
	f.StringVar(&c.HubTLSKey, "hub-tls-key", "", "key file (PEM) of --hub-tls-cert")
	f.StringVar(&c.TLSCert, "server-tls-cert", "", "certificate file (PEM) of the client and leaf listeners")
	f.StringVar(&c.TLSKey, "server-tls-key", "", "key file (PEM) of --server-tls-cert")
	f.StringVar(&c.TLSCA, "server-tls-ca", "", "CA file (PEM): require client and site certificates it signed")
	return cmd
}
