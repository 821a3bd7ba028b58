"""Concept vocabularies. Training and held-out sets are disjoint (conditions, drugs and names), so a
model that does well on held-out notes has learned the extraction task, not the terms."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Drug:
    name: str
    doses: tuple[tuple[float, str], ...]  # typical (value, unit) pairs, unit already normalised


@dataclass(frozen=True)
class Vocabulary:
    name: str
    conditions: tuple[str, ...]
    drugs: tuple[Drug, ...]
    first_names: tuple[str, ...]
    last_names: tuple[str, ...]

    def terms(self) -> dict[str, tuple[str, ...]]:
        """Every concept and name, by kind, for leakage checks."""
        return {
            "condition": self.conditions,
            "drug": tuple(d.name for d in self.drugs),
            "first name": self.first_names,
            "last name": self.last_names,
        }

    def words(self) -> set[str]:
        """Every word of every term, case-folded ("Van Dijk": van, dijk; "COVID-19": covid, 19)."""
        return {w.casefold() for terms in self.terms().values() for t in terms for w in re.split(r"[\s'-]+", t)}


TRAIN = Vocabulary(
    name="train",
    conditions=(
        "type 2 diabetes", "T2DM", "hypertension", "HTN", "hyperlipidaemia", "asthma", "GORD",
        "osteoarthritis", "hypothyroidism", "chronic kidney disease", "atrial fibrillation", "migraine",
        "lower back pain", "insomnia", "depression", "eczema", "gout", "obesity", "chest tightness",
        "polyuria", "blurred vision", "knee pain", "palpitations", "constipation", "psoriasis",
        "heartburn", "tremor", "numbness in feet",
    ),
    drugs=(
        Drug("Metformin", ((500, "mg"), (850, "mg"), (1, "g"))),
        Drug("Lisinopril", ((10, "mg"), (20, "mg"))),
        Drug("Amlodipine", ((5, "mg"), (10, "mg"))),
        Drug("Atorvastatin", ((20, "mg"), (40, "mg"))),
        Drug("Simvastatin", ((40, "mg"),)),
        Drug("Levothyroxine", ((50, "mcg"), (100, "mcg"))),
        Drug("Insulin glargine", ((10, "units"), (24, "units"))),
        Drug("Salbutamol", ((100, "mcg"), (200, "mcg"))),
        Drug("Omeprazole", ((20, "mg"), (40, "mg"))),
        Drug("Losartan", ((50, "mg"),)),
        Drug("Sertraline", ((50, "mg"), (100, "mg"))),
        Drug("Gliclazide", ((80, "mg"),)),
        Drug("Bisoprolol", ((2.5, "mg"), (5, "mg"))),
        Drug("Warfarin", ((3, "mg"), (5, "mg"))),
        Drug("Allopurinol", ((100, "mg"), (300, "mg"))),
        Drug("Lactulose", ((15, "ml"), (10, "ml"))),
        Drug("Ramipril", ((2.5, "mg"), (5, "mg"))),
        Drug("Apixaban", ((5, "mg"),)),
        Drug("Furosemide", ((40, "mg"),)),
        Drug("Zopiclone", ((7.5, "mg"),)),
    ),
    first_names=(
        "John", "Mary", "Robert", "Linda", "James", "Susan", "Michael", "Karen", "William", "Nancy",
        "Richard", "Betty", "Thomas", "Helen", "Charles", "Sandra", "Daniel", "Donna", "Mark", "Carol",
    ),
    last_names=(
        "Doe", "Ashworth", "Walker", "Hughes", "Patel", "Okafor", "Lindqvist", "Moreau", "Tanaka",
        "Kowalski", "Brennan", "Harlow", "Ferreira", "Nakamura", "Whitfield", "Osei", "Castillo", "Reyes",
    ),
)

HELD_OUT = Vocabulary(
    name="held-out",
    conditions=(
        "COVID-19", "fractured wrist", "hip fracture", "pneumonia", "fever", "sore throat",
        "loss of smell", "cellulitis", "UTI", "appendicitis", "sprained ankle", "otitis media",
        "bronchitis", "influenza", "shingles", "conjunctivitis", "kidney stones", "dehydration",
        "rib fracture", "tonsillitis", "persistent cough", "wheeze", "vomiting", "rash on arms",
    ),
    drugs=(
        Drug("Paxlovid", ((300, "mg"),)),
        Drug("Amoxicillin", ((500, "mg"), (250, "mg"))),
        Drug("Azithromycin", ((250, "mg"), (500, "mg"))),
        Drug("Dexamethasone", ((6, "mg"),)),
        Drug("Ceftriaxone", ((1, "g"), (2, "g"))),
        Drug("Oseltamivir", ((75, "mg"),)),
        Drug("Nitrofurantoin", ((100, "mg"),)),
        Drug("Cefalexin", ((500, "mg"),)),
        Drug("Doxycycline", ((100, "mg"),)),
        Drug("Prednisolone", ((40, "mg"), (30, "mg"))),
        Drug("Enoxaparin", ((40, "mg"),)),
        Drug("Tramadol", ((50, "mg"),)),
        Drug("Aciclovir", ((800, "mg"),)),
        Drug("Morphine sulfate", ((10, "mg"), (5, "ml"))),
        Drug("Ondansetron", ((4, "mg"),)),
        Drug("Clarithromycin", ((500, "mg"),)),
        Drug("Oral rehydration salts", ((200, "ml"),)),
        Drug("Vitamin D3", ((1000, "units"), (25, "mcg"))),
        Drug("Heparin", ((5000, "units"),)),
        Drug("Chloramphenicol eye drops", ((0.5, "ml"),)),
    ),
    first_names=(
        "Pete", "Sarah", "Paul", "Dave", "Aisha", "Mateo", "Ingrid", "Kwame", "Yuki", "Fatima",
        "Oleg", "Priya", "Sean", "Lucia", "Tariq", "Greta", "Hamid", "Noor", "Rosa", "Emeka",
    ),
    last_names=(
        "Jones", "Connor", "Bunyon", "Smith", "Abara", "Novak", "Quinn", "Haddad", "Van Dijk", "Sorensen",
        "Mbeki", "Rossi", "Kaur", "Delacroix", "Yilmaz", "Ivanova", "Gallagher", "Mendes",
    ),
)
