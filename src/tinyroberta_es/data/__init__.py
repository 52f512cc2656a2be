"""SQuAD-format question-answering data: types, loading, validation, named datasets, splits."""
