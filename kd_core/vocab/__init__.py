"""The vocabulary plan of a teacher/student pair: which tokens match (plan.py: truncate /
project / align, decided once, frozen), two tokenizations of one text cut into shared
character spans (spans.py), and the teacher's distribution read in the student's pieces
(pieces.py)."""
