"""An example `--reader` plug-in: labelled texts from a folder tree, one sub-folder per class.

    reviews/
      positive/  001.txt  002.txt ...
      negative/  101.txt ...

Copy this file next to your data (or anywhere on PYTHONPATH), adapt `records()`, and run

    bert-classify train --reader plugin_reader:FolderReader --train reviews/ --val reviews-val/

It follows the `bert_classify.data.RecordReader` protocol: constructed as `FolderReader(path)`,
`records()` yields `(text, label)` pairs, and `class_names` fixes the label order. Only the standard
library is needed; raising `DataError` shows your message to the user as is, without a traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bert_classify.errors import DataError


class FolderReader:
    """Each `<path>/<class name>/*.txt` file is one example of that class (UTF-8 text)."""

    def __init__(self, path: str | None) -> None:
        if path is None:
            raise DataError("FolderReader needs a folder: pass --train DIR (and --val DIR).")
        self.root = Path(path)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder; FolderReader expects one sub-folder per class.")
        # Sorted, so that the same folders always give the same label ids.
        self.class_names = sorted(child.name for child in self.root.iterdir() if child.is_dir())
        if not self.class_names:
            raise DataError(f"{self.root}: no sub-folders; make one per class and put .txt files in them.")

    def records(self) -> Iterator[tuple[str, str]]:
        for class_name in self.class_names:
            for file in sorted((self.root / class_name).glob("*.txt")):
                try:
                    text = file.read_text(encoding="utf-8").strip()
                except UnicodeDecodeError:
                    raise DataError(f"{file}: not valid UTF-8; save it as UTF-8.") from None
                if not text:
                    raise DataError(f"{file}: empty file; remove it or give it some text.")
                yield text, class_name
