//! Tests of the relay against scripted v2s on loopback sockets.
