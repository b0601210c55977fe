"""Answer sheets printed from the browser: an exam's roster (one sheet per
student, with the name printed and a QR code naming exam, student and page),
blank sheets for walk-ins, and blank sheets of any template."""
