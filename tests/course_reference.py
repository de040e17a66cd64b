"""The course's own evaluator code, kept verbatim as an independent oracle for the bundle's accuracy."""


def course_compute_acc(out, onehot_labels):
    """The course's ``evaluation_model.compute_acc`` loop: (hits, objects) over a batch of scores (B, 24)."""
    acc = total = 0
    for i in range(out.size(0)):
        k = int(onehot_labels[i].sum().item())
        total += k
        outv, outi = out[i].topk(k)
        lv, li = onehot_labels[i].topk(k)
        for j in outi:
            if j in li:
                acc += 1
    return acc, total
