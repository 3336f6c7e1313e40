//! Kubernetes discovery for the mirror node agent: from the Services, EndpointSlices and Pods
//! the API shows, which pods on this node to hook and which addresses to capture there.
//!
//! It only *produces* the desired state; attaching is the capture layer's job. The layers:
//! - [`policy`]: what a policy says about where to capture (a Service, server or client side);
//! - [`desired`]: the desired state as a pure function of the objects seen (no sockets);
//! - [`interfaces`]: a pod's interface on the node, by its network namespace and veth peer;
//! - [`watch`]: the API watches (kube-rs reflectors) that keep those objects current and
//!   publish each new desired state, keeping the last one when the API goes away.
//!
//! It is its own crate so that kube-rs, k8s-openapi and their TLS stack stay behind one
//! small interface; `mirror run --kubernetes` (agent/kubernetes.rs) applies what it publishes.

pub mod desired;
pub mod interfaces;
pub mod policy;
pub mod watch;

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
pub use kube::{self, Client};

pub use desired::{desired_state, Cluster, DesiredState, PodCapture, PodKey, Target};
pub use policy::{Capture, PolicyError, ServicePolicy, ServicePort, ServiceRef};
pub use watch::{ApiStatus, Discovery, DiscoveryConfig, DiscoveryUpdate, MirrorPolicyObject};
