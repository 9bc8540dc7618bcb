"""A fixed, varied set of (prediction, reference) pairs for checking BLEU/ROUGE against the published tools.

Punctuation, numbers, code, multi-line text, unicode, one-word answers, inflected words (stemming),
empty and whitespace-only predictions, repetitions (clipping), and lengths from 0 to 20+ tokens.
"""

from __future__ import annotations

CASES: list[tuple[str, str]] = [
    ("The answer is 42.", "The answer is 42"),
    ("the cat sat on the mat", "the cat sat on a mat"),
    ("There is a small dog in the garden today", "a small dog is in the garden"),
    ("42", "The answer is 42 ."),
    ("Paris is the capital of France.", "The capital of France is Paris."),
    ("running runs runner ran", "run running ran runs"),
    ("The children were playing happily in the gardens.", "The child plays happily in the garden."),
    ("def add(a, b): return a + b", "def add(a, b):\n    return a + b"),
    ("for i in range(10):\n    print(i)", "for i in range(10):\n    print(i)"),
    ("x = [1, 2, 3]; y = x[::-1]", "x = [1, 2, 3]\ny = list(reversed(x))"),
    ('return {"key": value, "n": 3.14}', 'return {"key": value, "n": 3.14159}'),
    (
        "Step 1: 12 + 7 = 19.\nStep 2: 19 * 2 = 38.\nThe answer is 38.",
        "12 + 7 = 19. 19 * 2 = 38. The answer is 38.",
    ),
    ("first line\nsecond line\n\nthird line", "first line\nsecond line\nthird line"),
    ("Oslo", "Oslo"),
    ("oslo", "Oslo"),
    ("Bergen", "Oslo"),
    ("", "The answer is 7."),
    ("   ", "nothing here"),
    ("Yes", "No"),
    ("1,234,567.89 dollars", "$1,234,567.89"),
    ("It costs $5.00 (five dollars) - roughly €4.60!", "It costs $5.00, about €4.60."),
    ("Héllo wörld, ça va? Très bien.", "Hello world, ça va ? Très bien ."),
    ("東京は日本の首都です。", "日本の首都は東京です。"),
    ("Emoji 🎉 party 🎉 time", "emoji party time 🎉"),
    ("the the the the the the the", "the cat is on the mat"),
    ("a b c d e f g h i j k l m n o p q r s t u v w x y z", "a b c d e f g h i j k l m n o p q r s t u v"),
    ('She said: "don\'t stop" -- and left...', 'She said "do not stop" and left.'),
    ("e.g. U.S.A. vs. U.K. in 1999-2000", "e.g. the U.S.A. versus the U.K. in 1999 - 2000"),
    ("Tab\tseparated\tvalues\there", "Tab separated values here"),
    ("SELECT name FROM users WHERE id = 3;", "SELECT name FROM users WHERE id=3;"),
    ("<b>bold</b> &amp; <i>italic</i>", "<b>bold</b> & <i>italic</i>"),
    ("Generalization generalizes generally", "generalize generalization general"),
    ("The quick brown fox jumps over the lazy dog", "The quick brown fox jumps over the lazy dog"),
    ("The quick brown fox jumps over the lazy dog", "the quick brown fox jumped over a lazy dog"),
    ("3 apples + 4 apples = 7 apples. So 7.", "Tom has 7 apples."),
    ("-5", "-5"),
    ("[1, 2, 3]", "[1, 2, 3]"),
    ("sorted(xs, key=lambda x: -x)", "sorted(xs, reverse=True)"),
]
