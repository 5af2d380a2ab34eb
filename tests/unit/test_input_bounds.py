"""The input bounds of proxy.translate.decode_input (docs/interface.md, "Query requests": limits and indices): counts,
list and map indices from 1 with no gaps. Map inputs are checked on a small model (Secrets Manager has none)."""

from __future__ import annotations

from typing import Any

import botocore.session
import pytest
from botocore.model import ServiceModel

from proxy import errors
from proxy.translate import InputLimits, decode_input

SM = botocore.session.get_session().get_service_model("secretsmanager")
MAPS = ServiceModel(
    {
        "metadata": {
            "protocol": "json",
            "apiVersion": "2020-01-01",
            "endpointPrefix": "maps",
            "jsonVersion": "1.1",
            "targetPrefix": "Maps",
            "serviceId": "Maps",
            "signatureVersion": "v4",
        },
        "operations": {
            "PutThing": {
                "name": "PutThing",
                "http": {"method": "POST", "requestUri": "/"},
                "input": {"shape": "PutThingRequest"},
            }
        },
        "shapes": {
            "PutThingRequest": {"type": "structure", "members": {"Labels": {"shape": "Labels"}}},
            "Labels": {"type": "map", "key": {"shape": "S"}, "value": {"shape": "S"}},
            "S": {"type": "string"},
        },
    },
    "maps",
)


def decode(params: dict[str, str], op: str = "BatchGetSecretValue", limits: InputLimits | None = None) -> Any:
    model = MAPS if op == "PutThing" else SM
    return decode_input(list(params.items()), model.operation_model(op), limits or InputLimits())


def ids(*indices: int) -> dict[str, str]:
    return {f"SecretIdList.member.{i}": f"s{i}" for i in indices}


def test_list_indices_from_one_in_any_order() -> None:
    assert decode({"SecretIdList.member.2": "b", "SecretIdList.member.1": "a"}) == {"SecretIdList": ["a", "b"]}


@pytest.mark.parametrize("indices", [(2,), (1, 3), (1, 2, 4), (0, 1), (1, 2, 2000)])
def test_list_gaps_are_invalid(indices: tuple[int, ...]) -> None:
    with pytest.raises(errors.InvalidParameterValue):
        decode(ids(*indices))


@pytest.mark.parametrize("index", ["01", "-1", "+1", "a", "1e2", "١", " 1"])
def test_list_indices_are_plain_decimals(index: str) -> None:
    with pytest.raises(errors.InvalidParameterValue):
        decode({f"SecretIdList.member.{index}": "x"})


def test_max_list_members_is_the_highest_index() -> None:
    limits = InputLimits(max_parameters=100, max_list_members=3)
    assert len(decode(ids(1, 2, 3), limits=limits)["SecretIdList"]) == 3
    with pytest.raises(errors.InvalidParameterValue, match=r"max_list_members \(3\)"):
        decode(ids(1, 2, 3, 4), limits=limits)
    with pytest.raises(errors.InvalidParameterValue, match="max_list_members"):  # before the gap is looked for
        decode({"SecretIdList.member.999999999": "x"}, limits=limits)


def test_max_parameters_counts_pairs() -> None:
    limits = InputLimits(max_parameters=3, max_list_members=100)
    decode(ids(1, 2, 3), limits=limits)
    with pytest.raises(errors.InvalidParameterValue, match=r"max_parameters \(3\)"):
        decode(ids(1, 2, 3, 4), limits=limits)


def test_maps_entries_from_one_without_gaps() -> None:
    good = {
        "Labels.entry.1.key": "a",
        "Labels.entry.1.value": "1",
        "Labels.entry.2.key": "b",
        "Labels.entry.2.value": "2",
    }
    assert decode(good, "PutThing") == {"Labels": {"a": "1", "b": "2"}}
    with pytest.raises(errors.InvalidParameterValue):
        decode({"Labels.entry.2.key": "a", "Labels.entry.2.value": "1"}, "PutThing")
    with pytest.raises(errors.InvalidParameterValue, match="max_list_members"):
        decode({"Labels.entry.5.key": "a", "Labels.entry.5.value": "1"}, "PutThing", InputLimits(100, 4))
    with pytest.raises(errors.MissingParameter):
        decode({"Labels.entry.1.key": "a"}, "PutThing")
    with pytest.raises(errors.UnknownParameter):
        decode({"Labels.entry.1.key": "a", "Labels.entry.1.value": "1", "Labels.entry.1.other": "x"}, "PutThing")
