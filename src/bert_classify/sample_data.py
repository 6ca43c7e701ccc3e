"""A small labelled data set in the DBpedia-14 layout, of our own making, for the offline quickstart.

Texts are generated from per-class vocabularies and templates, so a tiny model can learn them in a
minute on a CPU; the files have exactly the shape of the real DBpedia CSVs (label, title, content).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

CLASS_VOCABULARY: dict[str, tuple[list[str], list[str]]] = {
    "Company": (["company", "corporation", "firm", "manufacturer", "retailer"],
                ["founded", "headquartered", "shares", "subsidiary", "revenue", "employees", "products"]),
    "EducationalInstitution": (["university", "college", "school", "academy", "institute"],
                               ["students", "campus", "faculty", "degrees", "founded", "research", "enrolment"]),
    "Artist": (["singer", "painter", "musician", "songwriter", "sculptor"],
               ["album", "exhibition", "songs", "recorded", "gallery", "tour", "released"]),
    "Athlete": (["footballer", "sprinter", "cyclist", "swimmer", "boxer"],
                ["championship", "medal", "league", "season", "olympic", "scored", "team"]),
    "OfficeHolder": (["politician", "senator", "mayor", "governor", "minister"],
                     ["elected", "party", "office", "served", "district", "parliament", "term"]),
    "MeanOfTransportation": (["locomotive", "aircraft", "ship", "tank", "car"],
                             ["engine", "built", "launched", "navy", "wheels", "speed", "fleet"]),
    "Building": (["church", "tower", "house", "hotel", "castle"],
                 ["built", "storey", "architect", "historic", "listed", "floors", "designed"]),
    "NaturalPlace": (["mountain", "river", "lake", "glacier", "island"],
                     ["elevation", "flows", "summit", "basin", "tributary", "peak", "coast"]),
    "Village": (["village", "hamlet", "settlement", "commune", "parish"],
                ["population", "census", "district", "municipality", "county", "inhabitants", "rural"]),
    "Animal": (["moth", "beetle", "snail", "bird", "frog"],
               ["species", "genus", "family", "described", "larvae", "wingspan", "habitat"]),
    "Plant": (["shrub", "orchid", "tree", "fern", "herb"],
              ["flowering", "leaves", "native", "grows", "genus", "endemic", "perennial"]),
    "Album": (["album", "record", "compilation", "soundtrack", "mixtape"],
              ["tracks", "label", "producer", "chart", "single", "studio", "debut"]),
    "Film": (["film", "movie", "documentary", "thriller", "comedy"],
             ["directed", "starring", "screenplay", "premiered", "box", "office", "cast"]),
    "WrittenWork": (["novel", "book", "poem", "magazine", "memoir"],
                    ["published", "author", "chapters", "edition", "written", "fiction", "pages"]),
}
CLASS_NAMES = list(CLASS_VOCABULARY)
_FILLER = ["the", "a", "of", "in", "and", "is", "was", "its", "an", "known", "for", "by"]
_PLACES = ["Norway", "Ohio", "Bavaria", "Kerala", "Chile", "Wales", "Quebec", "Tuscany", "Otago", "Hokkaido"]
_NAMES = ["Alder", "Brook", "Carrow", "Dunmore", "Ellis", "Fenwick", "Garland", "Hale", "Ives", "Juniper"]


def make_row(label_index: int, rng: random.Random) -> tuple[int, str, str]:
    """(1-based label, title, content) for class `label_index` (0-based)."""
    nouns, words = CLASS_VOCABULARY[CLASS_NAMES[label_index]]
    title = f"{rng.choice(_NAMES)} {rng.choice(_NAMES)}"
    sentence = [title, "is", "a", rng.choice(nouns), "in", rng.choice(_PLACES) + "."]
    for _ in range(rng.randint(4, 30)):
        sentence.append(rng.choice(words) if rng.random() < 0.45 else rng.choice(_FILLER))
    return label_index + 1, title, " ".join(sentence) + "."


def write_sample_dataset(directory: str | Path, train_per_class: int = 40, val_per_class: int = 10,
                         test_per_class: int = 15, seed: int = 7) -> dict[str, Path]:
    """Write train.csv, val.csv, test.csv and classes.txt; return their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class), ("test", test_per_class)):
        rows = [make_row(label, rng) for label in range(len(CLASS_NAMES)) for _ in range(per_class)]
        rng.shuffle(rows)
        paths[split] = directory / f"{split}.csv"
        with open(paths[split], "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(rows)
    paths["classes"] = directory / "classes.txt"
    paths["classes"].write_text("\n".join(CLASS_NAMES) + "\n", encoding="utf-8")
    return paths
