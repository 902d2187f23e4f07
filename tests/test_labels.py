"""Label schemas, mappings and densify on hand-made masks; the Probe and SchemaName vocabularies."""

import csv
import inspect
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from pleura.labels import (
    ANATOMY,
    DENSE,
    PROBES,
    SCHEMA_ORDER,
    SCHEMAS,
    SPARSE,
    Probe,
    SchemaName,
    convert,
    densify,
    get_schema,
    recorded_schema,
    to_dense,
    to_sparse,
)


def test_schemas_have_the_papers_classes():
    assert SPARSE.names == ("background", "a_line", "b_line", "pleural_line")
    assert set(DENSE.names) >= {
        "a_line", "b_line", "pleural_line_healthy", "pleural_line_unhealthy",
        "below_pleura_healthy", "below_pleura_unhealthy", "outside_scan",
    }  # fmt: skip
    for schema in (ANATOMY, DENSE, SPARSE):
        assert schema.palette().shape == (schema.num_classes, 3)


def test_unknown_schema_lists_valid_names():
    with pytest.raises(KeyError, match="anatomy, dense, sparse"):
        get_schema("coarse")


def test_mappings_send_every_anatomy_class_where_expected():
    a = np.arange(ANATOMY.num_classes, dtype=np.uint8)
    sparse = to_sparse(to_dense(a))
    expect = {
        "pleural_line_healthy": "pleural_line", "pleural_line_unhealthy": "pleural_line",
        "a_line": "a_line", "b_line": "b_line",
    }  # fmt: skip
    for i, name in enumerate(ANATOMY.names):
        assert SPARSE.names[sparse[i]] == expect.get(name, "background"), name
    assert DENSE.names[to_dense(np.uint8(ANATOMY.index("consolidation")))] == "below_pleura_unhealthy"
    assert DENSE.names[to_dense(np.uint8(ANATOMY.index("rib_shadow")))] == "background"
    np.testing.assert_array_equal(convert(a, "anatomy", "sparse"), sparse)
    with pytest.raises(ValueError, match="only coarsen"):
        convert(sparse, "sparse", "dense")


def test_check_names_the_source_and_the_bad_index():
    with pytest.raises(ValueError, match=r"m\.png: class index 9 is not in schema 'sparse'"):
        SPARSE.check(np.array([[0, 9]], dtype=np.uint8), "m.png")


def _column_mask() -> np.ndarray:
    """6x4 sparse mask: pleura at row 1 in columns 0-2, column 3 a rib shadow; B-line in col 1, A-line."""
    b, a, bl, p = (SPARSE.index(n) for n in ("background", "a_line", "b_line", "pleural_line"))
    m = np.full((6, 4), b, dtype=np.uint8)
    m[1, :3] = p
    m[2:, 1] = bl
    m[3, 0] = a
    m[3, 2] = a
    return m


@pytest.mark.parametrize("diagnosis,healthy", [("normal", True), ("covid", False), ("pneumonia", False)])
def test_densify_by_hand(diagnosis, healthy):
    dense = densify(_column_mask(), diagnosis)
    h = "healthy" if healthy else "unhealthy"
    names = np.array(DENSE.names)[dense]
    assert (names[1, :3] == f"pleural_line_{h}").all()
    assert (names[0] == "background").all()  # above the pleura
    assert (names[:, 3] == "background").all()  # no pleura on that line: rib shadow
    assert (names[2:, 1] == "b_line").all()
    assert names[3, 0] == "a_line" and names[2, 0] == f"below_pleura_{h}" and names[5, 2] == f"below_pleura_{h}"
    np.testing.assert_array_equal(to_sparse(dense), _column_mask())


def test_densify_follows_beam_lines_not_image_columns():
    sparse = np.zeros((2, 2), dtype=np.uint8)
    sparse[0, 1] = SPARSE.index("pleural_line")
    # pixel (1, 0) lies on beam line 1, below the pleura; (0, 0) is outside the scan.
    rows = np.array([[-1, 0], [1, 1]])
    cols = np.array([[-1, 1], [1, 0]])
    dense = densify(sparse, "covid", beam_rc=(rows, cols))
    assert DENSE.names[dense[1, 0]] == "below_pleura_unhealthy"
    assert DENSE.names[dense[0, 0]] == "outside_scan"
    assert DENSE.names[dense[1, 1]] == "background"


def test_densify_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown diagnosis"):
        densify(_column_mask(), "flu")
    with pytest.raises(ValueError, match="class index 7"):
        densify(np.full((2, 2), 7, dtype=np.uint8), "normal")


@pytest.mark.parametrize(
    ("text", "probe"),
    [
        ("linear", Probe.LINEAR),
        ("curvilinear", Probe.CURVILINEAR),
        ("convex", Probe.CURVILINEAR),  # what real data (POCUS, the scan-area detector's shape) calls it
        (" CONVEX ", Probe.CURVILINEAR),
        ("Linear", Probe.LINEAR),
        (Probe.CURVILINEAR, Probe.CURVILINEAR),
    ],
)
def test_probe_parse_reads_the_aliases_real_data_uses(text, probe):
    assert Probe.parse(text) is probe


@pytest.mark.parametrize("text", ["phased", "", "sector", "mixed"])
def test_probe_parse_names_the_valid_values(text):
    with pytest.raises(ValueError) as err:
        Probe.parse(text)
    assert str(err.value) == (
        f"unknown probe {text!r}; choose one of: linear, curvilinear (convex is read as curvilinear)"
    )


def test_probe_values_are_written_as_before():
    """Manifests and JSON keep the plain values: a Probe is a str whose text is its value."""
    assert PROBES == (Probe.LINEAR, Probe.CURVILINEAR) == ("linear", "curvilinear")
    assert Probe.CURVILINEAR == "curvilinear" and hash(Probe.LINEAR) == hash("linear")
    assert json.dumps({"probe": Probe.CURVILINEAR, SchemaName.DENSE: 1}) == '{"probe": "curvilinear", "dense": 1}'
    assert f"{Probe.LINEAR}/{SchemaName.SPARSE}" == str(Probe.LINEAR) + "/sparse" == "linear/sparse"
    buffer = io.StringIO()
    csv.DictWriter(buffer, ["probe", "schema"]).writerow({"probe": Probe.CURVILINEAR, "schema": SchemaName.ANATOMY})
    assert buffer.getvalue() == "curvilinear,anatomy\r\n"


def test_schema_names_and_the_one_order():
    assert tuple(SchemaName) == SCHEMA_ORDER == ("anatomy", "dense", "sparse")
    assert tuple(SCHEMAS) == SCHEMA_ORDER
    for name, schema in zip(SchemaName, (ANATOMY, DENSE, SPARSE), strict=True):
        assert get_schema(name) is schema and get_schema(str(name)) is schema and get_schema(schema) is schema
    with pytest.raises(ValueError, match="only coarsen along anatomy -> dense -> sparse"):
        convert(np.zeros((2, 2), np.uint8), SchemaName.SPARSE, SchemaName.DENSE)


def test_dataset_writer_and_gallery_share_the_schema_order():
    """The order is defined once (labels.SCHEMA_ORDER); the dataset reader and the simulator's writer use it."""
    from pleura.data import dataset
    from pleura.simulate import writer
    from pleura.viz import dataset_gallery

    assert dataset.SCHEMA_ORDER is SCHEMA_ORDER and writer.SCHEMA_ORDER is SCHEMA_ORDER
    assert inspect.signature(dataset_gallery).parameters["schemas"].default is SCHEMA_ORDER
    assert not hasattr(writer, "MASK_SCHEMAS") and not hasattr(dataset, "_COARSENING")  # no second copy


def test_recorded_schema_refuses_none():
    assert recorded_schema("sparse", "m.safetensors") is SPARSE
    for missing in (None, ""):
        with pytest.raises(ValueError, match=r"^m\.safetensors: the model records no label schema; it is not a pleura"):
            recorded_schema(missing, "m.safetensors")


def test_a_model_without_a_schema_is_refused_not_taken_for_dense(tmp_path: Path):
    """Where ``or "dense"`` used to fill in: the predictor, eval-model and train-cls's held-out predictions."""
    from pleura.evaluate.external import evaluate_model
    from pleura.infer.predictor import Predictor
    from pleura.models import ReverseTransferClassifier, UNet, UNetConfig, save_model
    from pleura.train.cls import predict_rows

    model = ReverseTransferClassifier(UNet(UNetConfig(width=4, depth=2, schema=None)), tap="logits").eval()
    path = save_model(model, tmp_path / "noschema.safetensors")
    message = re.escape(
        f"{path}: the model records no label schema; it is not a pleura segmentation model, or was saved without one"
    )
    with pytest.raises(ValueError, match=message):
        Predictor(path, engine="torch")
    with pytest.raises(ValueError, match=message):
        evaluate_model(path, tmp_path / "data", tmp_path / "out")  # before any data is read
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="ReverseTransferClassifier: the model records no label schema"):
        predict_rows(model, tmp_path / "data", [])
