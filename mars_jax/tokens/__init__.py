"""The token space shared by data, model and samplers (numpy only; imports no other package).

`vocab`: the one id space; `layout`: static `(modality, length)` layouts and their
validator; `formats`: the task sequence formats; `code_order`: the stage-III high-res
code order.
"""
