"""AWS partitions from botocore's endpoints data: which partition a region is in, and its DNS suffix.

Used where an ARN or a service host name is written for a region (``iam-policy``, the injector's region
check). Source: botocore's ``endpoints.json`` (``regionRegex``, ``regions`` and ``dnsSuffix`` of each partition),
as :class:`botocore.regions.EndpointResolver` reads it.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Partition:
    name: str  # the ARN's partition: aws, aws-cn, aws-us-gov, ...
    dns_suffix: str  # amazonaws.com, amazonaws.com.cn, ...


@functools.cache
def _partitions() -> tuple[dict[str, Any], ...]:
    import botocore.loaders

    data = botocore.loaders.create_loader().load_data("endpoints")
    return tuple(data["partitions"])


def partition_of_region(region: str) -> Partition | None:
    """The partition holding ``region`` (listed there, or matching its ``regionRegex``); None for a name no
    partition accepts (not a region)."""
    for p in _partitions():
        if region in p.get("regions", {}):
            return Partition(p["partition"], p["dnsSuffix"])
    for p in _partitions():
        if re.match(p["regionRegex"], region):
            return Partition(p["partition"], p["dnsSuffix"])
    return None
