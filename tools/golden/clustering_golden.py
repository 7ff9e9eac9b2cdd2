"""Golden values for crates/clustering, computed with scikit-learn / numpy.

Writes fixtures/golden/clustering/golden.json:
  ari:        adjusted_rand_score on fixed label vectors
  silhouette: silhouette_score and silhouette_samples on a small fixed dataset
  ctfidf:     class-based TF-IDF (BERTopic's formula) over CountVectorizer counts with our
              tokenisation rules (lowercase, alphanumeric runs of >= 2 chars, English stop words)
  pca:        sklearn PCA(n_components=2) on a small dataset
  kmeans:     sklearn KMeans inertia and labels on well-separated blobs

Usage (from the repository root): python3 tools/golden/clustering_golden.py
"""
import json
import os

import numpy as np
import sklearn
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.decomposition import PCA
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics import adjusted_rand_score, silhouette_samples, silhouette_score

OUT = os.path.join("fixtures", "golden", "clustering", "golden.json")


def ari_cases():
    rng = np.random.default_rng(1)
    cases = [
        ([0, 0, 1, 1], [0, 0, 1, 2]),
        ([0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1]),
        ([0, 0, 1, 1, 2, 2], [1, 1, 0, 0, 2, 2]),
        ([0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 0, 0]),
        ([3, 3, 3, 7, 7, 9, 9, 9, 9], [1, 1, 2, 2, 2, 3, 3, 3, 1]),
    ]
    a = rng.integers(0, 5, size=200)
    b = np.where(rng.random(200) < 0.7, a, rng.integers(0, 6, size=200))
    cases.append((a.tolist(), b.tolist()))
    c = rng.integers(0, 3, size=150)
    d = rng.integers(0, 4, size=150)
    cases.append((c.tolist(), d.tolist()))
    return [{"a": list(map(int, a)), "b": list(map(int, b)), "ari": float(adjusted_rand_score(a, b))}
            for a, b in cases]


def silhouette_case():
    rng = np.random.default_rng(2)
    centres = rng.normal(scale=3.0, size=(3, 5))
    x = np.concatenate([c + rng.normal(size=(20, 5)) for c in centres]).astype(np.float32)
    labels = np.repeat([0, 1, 2], 20)
    # Move a few points to the wrong label so some silhouettes are negative.
    labels[[0, 21, 45]] = [1, 2, 0]
    # A singleton cluster (silhouette 0 by definition).
    labels[59] = 3
    return {
        "rows": x.astype(float).tolist(),
        "labels": labels.tolist(),
        "score": float(silhouette_score(x.astype(np.float64), labels)),
        "samples": silhouette_samples(x.astype(np.float64), labels).tolist(),
    }


def ctfidf_case():
    classes = [
        ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
         "Weng earns $12 an hour for babysitting. Yesterday she did 50 minutes of babysitting.",
         "Betty is saving money for a new wallet which costs $100. Betty has only half of the money."],
        ["def add(a, b): return a + b  # Python function returning the sum",
         "Write a Python function that returns the list of prime numbers below n.",
         "The function should raise ValueError when the list is empty; Python list index error."],
        ["Which planet is known as the Red Planet? Mars, Venus, Jupiter or Saturn.",
         "What is the boiling point of water at sea level in degrees Celsius?",
         "Photosynthesis converts light energy into chemical energy in plants."],
        ["Café owners in Zürich sell croissants; the café opens at 7.",
         "Translate 'good morning' into French: bonjour. Translate 'thank you': merci."],
    ]
    vectorizer = CountVectorizer(token_pattern=r"(?u)[^\W_]{2,}", lowercase=True, stop_words="english")
    joined = [" ".join(docs) for docs in classes]
    counts = vectorizer.fit_transform(joined).toarray().astype(np.float64)
    terms = vectorizer.get_feature_names_out()
    # BERTopic ClassTfidfTransformer (bm25_weighting=False, reduce_frequent_words=False).
    df = counts.sum(axis=0)
    avg_nr_samples = int(counts.sum(axis=1).mean())
    idf = np.log((avg_nr_samples / df) + 1)
    tf = counts / counts.sum(axis=1, keepdims=True)
    scores = tf * idf
    top = []
    for row in scores:
        order = sorted(range(len(terms)), key=lambda i: (-row[i], terms[i]))
        top.append([[str(terms[i]), float(row[i])] for i in order[:8] if row[i] > 0])
    return {"classes": classes, "top_n": 8, "keywords": top}


def pca_case():
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(6, 6))
    x = (rng.normal(size=(120, 6)) * np.array([5.0, 2.5, 1.0, 0.5, 0.3, 0.1])) @ basis + 3.0
    x = x.astype(np.float32)
    pca = PCA(n_components=2, svd_solver="full").fit(x.astype(np.float64))
    return {
        "rows": x.astype(float).tolist(),
        "components": pca.components_.tolist(),
        "explained_variance": pca.explained_variance_.tolist(),
        "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
        "projections_first5": pca.transform(x[:5].astype(np.float64)).tolist(),
    }


def kmeans_case():
    x, _ = make_blobs(n_samples=400, n_features=8, centers=4, cluster_std=1.5, random_state=4)
    x = x.astype(np.float32)
    model = KMeans(n_clusters=4, n_init=10, random_state=0, algorithm="lloyd").fit(x)
    return {"rows": x.astype(float).tolist(), "k": 4, "inertia": float(model.inertia_),
            "labels": model.labels_.tolist()}


def main():
    golden = {
        "generator": f"tools/golden/clustering_golden.py (scikit-learn {sklearn.__version__}, numpy {np.__version__})",
        "ari": ari_cases(),
        "silhouette": silhouette_case(),
        "ctfidf": ctfidf_case(),
        "pca": pca_case(),
        "kmeans": kmeans_case(),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(golden, f)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
