"""The producer's review loop: review.html, picks and rejections (review.yaml), re-cuts."""
