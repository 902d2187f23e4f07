"""Import labels made in annotation tools (CVAT, COCO, Labelme, mask PNGs) into a pleura manifest dataset.

One reader per format turns an export into shapes per media frame (``model``); ``importer`` streams each clip
once, cleans its labelled frames as ``predict`` does and gives their masks the same geometry (``raster``).

Example:
    >>> from pleura.data.annotations import AnnotationImportConfig, import_annotations
    >>> cfg = AnnotationImportConfig(format="cvat")
    >>> import_annotations("task_195", "data/lus", "labels.json", cfg)  # doctest: +SKIP
"""

from pleura.data.annotations.importer import (
    AnnotationImportConfig,
    ImportReport,
    import_annotations,
    parse_thickness,
    rasterise,
    read_meta,
)
from pleura.data.annotations.model import FORMATS, AnnotationError, AnnotationFormat, LabelMap, load_label_map
from pleura.data.annotations.raster import (
    decode_coco_rle,
    decode_cvat_rle,
    fill_polygon,
    fit_mask_to_size,
)

__all__ = [
    "FORMATS",
    "AnnotationError",
    "AnnotationFormat",
    "AnnotationImportConfig",
    "ImportReport",
    "LabelMap",
    "decode_coco_rle",
    "decode_cvat_rle",
    "fill_polygon",
    "fit_mask_to_size",
    "import_annotations",
    "load_label_map",
    "parse_thickness",
    "rasterise",
    "read_meta",
]
