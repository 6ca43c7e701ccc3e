"""Input data: readers for DBpedia-layout CSV, CSV with a header, JSON Lines and plug-ins; label maps; splits.

Everything a user can get wrong in a file raises DataError naming the file and line, before training starts.
"""

from __future__ import annotations

from bert_classify.data.labels import LabeledData, read_class_names
from bert_classify.data.plugins import RecordReader
from bert_classify.data.readers import DATA_FORMATS, TEXT_FORMATS, load_labeled_data, read_texts
from bert_classify.data.split import stratified_split

__all__ = [
    "DATA_FORMATS",
    "TEXT_FORMATS",
    "LabeledData",
    "RecordReader",
    "load_labeled_data",
    "read_class_names",
    "read_texts",
    "stratified_split",
]
