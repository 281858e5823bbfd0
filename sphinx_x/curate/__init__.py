"""Data curation builders: the OCR-intensive PDF set (`ocr_builder`) and the Set-of-Mark set (`som`)."""
