"""The papers' reported numbers (from book/papers.md), for comparison beside ours.

Only what the papers state is here; our measurements live in book/results. Accuracies are % of
test_people answered exactly (Part 3.1), capacities in bits per parameter (Part 3.3).
"""
from kn.data.records import ATTRIBUTES

PART31_PER_ATTRIBUTE = {  # Result 1-3, out-of-distribution accuracy (%), ATTRIBUTES order
    "R1 mixed, bioS single": (96.1, 97.4, 90.1, 94.8, 88.8, 53.4),
    "R1 mixed, bioR single": (94.7, 92.0, 80.5, 73.0, 74.3, 56.1),
    "R3 multi5+permute, pretrain + finetune": (100, 99.0, 91.3, 97.7, 95.1, 98.7),
}
PART31_MEAN = {
    "R1 mixed, bioS single": 86.6, "R1 mixed, bioR single": 77.7,
    "R2 pretrain + finetune, bioS single": 9.7, "R3 multi5+permute, pretrain + finetune": 96.6,
}
AUGMENTATION_MEAN = {  # Result 3: pretrain + QA finetune, bioS
    "single": 9.7, "fullname": 48.9, "permute1": 4.4, "permute2": 53.2, "permute5": 70.0,
    "permute5+fullname": 80.2, "multi2": 41.1, "multi2+permute": 91.2, "multi2+permute+fullname": 96.1,
    "multi5": 41.0, "multi5+fullname": 82.4, "multi5+permute": 96.6,
}
QA_FRACTION_MEAN = {0.1: 24.5, 0.2: 53.6, 0.4: 77.5, 0.6: 87.1, 0.8: 85.7}  # R1, bioS single
CELEBRITY = {"single+permute1": (4.4, 86.8), "single": (9.7, 63.2), "bioR single": (10.0, 76.3)}  # R6 before, after
BITS_PER_PARAM = {1000: 2.0, 100: 1.0}     # Part 3.3, Results 1 and 4 (GPT-2)
INT4_BITS_PER_PARAM = 0.7                  # Result 8; int8 keeps 2


def per_attribute(name: str) -> dict:
    return dict(zip(ATTRIBUTES, PART31_PER_ATTRIBUTE[name]))
