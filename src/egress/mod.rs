//! Egress allow-lists: which hosts a sandbox may reach, and the proxy that holds it to that.
//!
//! The design in five lines (the why is in docs/ARCHITECTURE.md, "Egress allow-lists"):
//! - sandboxes keep `network: none`; their only way out is a Unix socket bind-mounted from
//!   the host, to which a forwarder in the helper hands each connection with a preamble;
//! - behind it, one proxy container per daemon runs this binary's `egress-proxy` subcommand
//!   ([`proxy::serve`]) and decides each CONNECT or absolute-form HTTP request by name;
//! - a grant (a session's or a run's key and secret) carries its list of [`policy::Pattern`]s,
//!   narrowed from the operator's ceiling ([`policy::List::admit`], [`policy::List::narrow`]);
//! - names are resolved by the proxy, and private addresses are refused unless allowed;
//! - the daemon drives the proxy over JSON lines on its stdio ([`proxy::Op`], [`proxy::Event`]).
//!
//! [`policy`] is pure (patterns, lists, coverage, address classes); [`proxy`] is the server;
//! [`daemon`] is the daemon's side (the proxy container, the grants, each run's report).

pub mod daemon;
pub mod policy;
pub mod proxy;
