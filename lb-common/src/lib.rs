//! Types shared by the XDP datapath (`lb-ebpf`) and the controller (`lb-userspace`).
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]` with explicit padding,
//! so both sides agree on every byte. Only pure helpers live here, no I/O.
#![cfg_attr(not(test), no_std)]

pub mod capture;
pub mod consts;
pub mod decap;
pub mod encap;
pub mod flow;
pub mod fragment;
pub mod gue;
pub mod hash;
pub mod icmp;
pub mod quic;
pub mod service;
pub mod stats;
