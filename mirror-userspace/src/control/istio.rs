//! `mirror config from-istio`: Istio VirtualService and Gateway API HTTPRoute mirroring
//! turned into this agent's config file.
