//! The redirect listener: where every agent connection lands.
//!
//! It listens on the addresses the programs rewrite connects to (127.0.0.1 and ::1 by
//! default, one port) and hands each accepted stream to [`crate::session`]. It does no
//! deciding itself.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use tokio::net::{TcpListener, TcpSocket};

use crate::{config::RedirectConfig, session::SessionContext};

/// How many not-yet-accepted connections the kernel queues per listener.
const BACKLOG: u32 = 4096;

/// The bound listeners.
pub struct RedirectListeners {
    listeners: Vec<TcpListener>,
}

/// Errors binding the listeners.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address}: {source}")]
pub struct BindError {
    pub address: SocketAddr,
    pub source: std::io::Error,
}

impl RedirectListeners {
    /// Binds IPv4, and IPv6 unless disabled. IPv6 failing to bind is reported but not
    /// fatal: IPv6 connects then fail closed (nothing listens where they are sent).
    pub fn bind(config: &RedirectConfig) -> Result<Self, BindError> {
        let mut listeners = vec![bind_one(SocketAddr::new(
            IpAddr::V4(config.ipv4),
            config.port,
        ))?];
        if config.ipv6_enabled {
            match bind_one(SocketAddr::new(IpAddr::V6(config.ipv6), config.port)) {
                Ok(listener) => listeners.push(listener),
                Err(error) => {
                    tracing::error!(%error, "IPv6 redirect listener unavailable: IPv6 connects from agents will be refused");
                }
            }
        }
        Ok(Self { listeners })
    }

    /// The addresses actually bound.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// The first listener, for reading socket options such as the netns cookie.
    pub fn first(&self) -> Option<&TcpListener> {
        self.listeners.first()
    }

    /// Accepts forever, one task per connection.
    pub async fn serve(self, context: Arc<SessionContext>) {
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.listeners {
            let context = Arc::clone(&context);
            tasks.spawn(accept_loop(listener, context));
        }
        while tasks.join_next().await.is_some() {}
    }
}

fn bind_one(address: SocketAddr) -> Result<TcpListener, BindError> {
    let error = |source| BindError { address, source };
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(error)?;
    socket.set_reuseaddr(true).map_err(error)?;
    socket.set_nodelay(true).map_err(error)?;
    socket.bind(address).map_err(error)?;
    socket.listen(BACKLOG).map_err(error)
}

async fn accept_loop(listener: TcpListener, context: Arc<SessionContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let context = Arc::clone(&context);
                tokio::spawn(async move {
                    let local = match stream.local_addr() {
                        Ok(local) => local,
                        Err(error) => {
                            tracing::warn!(%peer, %error, "accepted stream has no local address");
                            return;
                        }
                    };
                    crate::session::handle(context, stream, peer, local).await;
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!(%error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}
