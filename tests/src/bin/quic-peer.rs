//! A QUIC test peer for the lab: `quic-peer server` answers every request with its name,
//! issuing QUIC-LB connection IDs with `--quic-lb`; `quic-peer client` opens connections,
//! each on its own endpoint, and rebinds each to a new port between requests (what a NAT
//! rebinding or a client's migration looks like to a load balancer), then prints one JSON
//! line: how many connections survived and which servers answered.

use std::{
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use anyhow::Context as _;
use clap::Parser;
use quic_lb::{CidGenerator, ServerId};

// The crate root is this file, so its modules are found by path, beside it.
#[cfg(test)]
#[path = "quic-peer/cid_test.rs"]
mod cid_test;
#[path = "quic-peer/client.rs"]
mod client;
#[path = "quic-peer/server.rs"]
mod server;
#[path = "quic-peer/tls.rs"]
mod tls;

#[derive(Parser)]
#[command(about = "QUIC server and client for lb's lab tests")]
enum Command {
    /// Answer each request (a bidirectional stream) with NAME; print "ready" once listening.
    Server {
        #[arg(long, value_name = "ADDR:PORT")]
        listen: SocketAddr,
        #[arg(long)]
        name: String,
        /// Issue QUIC-LB CIDs: config=0,server-id-len=2,nonce-len=6[,key=<32 hex digits>].
        #[arg(long, value_name = "CONFIG", requires = "server_id")]
        quic_lb: Option<quic_lb::Config>,
        /// This server's ID in hex, as long as the config's server-id-len.
        #[arg(long, value_name = "HEX", requires = "quic_lb")]
        server_id: Option<ServerId>,
    },
    /// Open N connections, rebind each R times with a request after each, print a JSON line.
    Client {
        #[arg(long, value_name = "ADDR:PORT")]
        connect: SocketAddr,
        #[arg(long, value_name = "N")]
        connections: usize,
        #[arg(long, value_name = "R")]
        rebinds: usize,
        /// Every socket, the first and each rebind's, binds this address with a new port.
        #[arg(long, value_name = "IP")]
        bind_ip: IpAddr,
        /// A request not answered in this time kills its connection.
        #[arg(long, value_name = "T", default_value_t = 2000)]
        timeout_ms: u64,
        /// After half of the rebinds, print "paused" once every connection is there and wait
        /// (at most 20 s) until this file exists.
        #[arg(long, value_name = "PATH")]
        pause_file: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let command = Command::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match command {
        Command::Server {
            listen,
            name,
            quic_lb,
            server_id,
        } => {
            let generator = match (quic_lb, server_id) {
                (Some(config), Some(id)) => Some(
                    CidGenerator::new(config, id, true)
                        .context("--server-id does not fit --quic-lb")?,
                ),
                _ => None,
            };
            runtime.block_on(async {
                let endpoint = server::endpoint(listen, generator)?;
                println!("ready");
                std::io::stdout().flush().context("writing stdout")?;
                server::serve(endpoint, name).await;
                Ok(())
            })
        }
        Command::Client {
            connect,
            connections,
            rebinds,
            bind_ip,
            timeout_ms,
            pause_file,
        } => {
            let plan = client::Plan {
                connect,
                connections,
                rebinds,
                bind_ip,
                timeout: Duration::from_millis(timeout_ms),
                pause_file,
            };
            let report = runtime.block_on(client::run(plan))?;
            println!("{report}");
            Ok(())
        }
    }
}
