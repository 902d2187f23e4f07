"""Import labels made in annotation tools (CVAT, COCO, Labelme, mask PNGs) into a pleura manifest dataset, and
export masks back to those tools as editable polygons.

One reader per format turns an export into shapes per media frame (``model``); ``importer`` streams each clip
once, cleans its labelled frames as ``predict`` does and gives their masks the same geometry (``raster``).
``export`` writes masks (a model's pre-labels) as CVAT XML, COCO or Labelme polygons (``polygons``) with the
label map that imports them back.

Example:
    >>> from pleura.data.annotations import AnnotationImportConfig, import_annotations
    >>> cfg = AnnotationImportConfig(format="cvat")
    >>> import_annotations("task_195", "data/lus", "labels.json", cfg)  # doctest: +SKIP
"""

from pleura.data.annotations.export import ExportFormat, ExportItem, ExportReport, FrameMask, export_labels
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
    "ExportFormat",
    "ExportItem",
    "ExportReport",
    "FrameMask",
    "ImportReport",
    "LabelMap",
    "decode_coco_rle",
    "decode_cvat_rle",
    "export_labels",
    "fill_polygon",
    "fit_mask_to_size",
    "import_annotations",
    "load_label_map",
    "parse_thickness",
    "rasterise",
    "read_meta",
]
