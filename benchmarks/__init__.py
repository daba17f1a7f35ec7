"""Benchmarks of hypervisor.cpr against real QEMU VMs (TCG) on this machine.

``python -m benchmarks`` (from the repository root, with the venv's Python)
runs them and prints one table; see docs/benchmarks.md for what each figure
means, how it is measured and the figures of the last full run.
"""
