"""Make the collection importable as ansible_collections.hypervisor.cpr for plain pytest."""

import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(REPO_ROOT, ".cache", "collections")


def _link_collection() -> None:
    link = os.path.join(COLLECTIONS, "ansible_collections", "hypervisor", "cpr")
    if not os.path.islink(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(REPO_ROOT, link)


if "ansible_collections.hypervisor.cpr" not in sys.modules and not REPO_ROOT.endswith("ansible_collections/hypervisor/cpr"):
    _link_collection()
    sys.path.insert(0, COLLECTIONS)
