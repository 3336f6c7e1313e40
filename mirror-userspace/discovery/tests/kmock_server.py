"""A Kubernetes API mock for discovery's tests: kmock's stateful emulator (list, watch,
create, patch, delete) on a loopback port. Prints the port, then serves until killed.

Usage: python kmock_server.py
"""

import asyncio

import kmock

RESOURCES = [
    "v1/pods",
    "v1/services",
    "discovery.k8s.io/v1/endpointslices",
    "mirror.dev/v1alpha1/mirrorpolicies",
]


async def main():
    async with kmock.KubernetesEmulator() as emulator:
        for resource in RESOURCES:
            emulator.resources[resource] = {"namespaced": True}
        async with kmock.Server(emulator, host="127.0.0.1", port=0) as server:
            print(server.port, flush=True)
            await asyncio.Event().wait()


asyncio.run(main())
