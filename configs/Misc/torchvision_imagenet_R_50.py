"""Train an ImageNet classifier (torchvision's ResNet-50 and ImageNet dataset) with segtron's
training loop: segtron as a general engine for any model and task.

    python tools/lazyconfig_train_net.py --config-file configs/Misc/torchvision_imagenet_R_50.py \
        --num-gpus 8 dataloader.train.dataset.root=/path/to/imagenet/

The model wrapper, evaluator and loader builder below live in the config only to keep the
example in one file; in a project, put such code in a module and import it.
"""

import torch
import torchvision
from fvcore.common.param_scheduler import MultiStepParamScheduler
from omegaconf import OmegaConf
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import Bottleneck, ResNet
from torchvision.transforms import transforms as T

from segtron.config import LazyCall as L
from segtron.data.samplers import InferenceSampler, TrainingSampler
from segtron.evaluation import DatasetEvaluator
from segtron.model_zoo import get_config
from segtron.solver import WarmupParamScheduler
from segtron.solver.build import get_default_optimizer_params
from segtron.utils import comm


def build_data_loader(dataset, batch_size, num_workers, training=True):
    """A torch DataLoader over ``dataset``: an infinite shuffled stream when ``training``,
    else this process's share of the dataset, once."""
    return torch.utils.data.DataLoader(
        dataset,
        sampler=(TrainingSampler if training else InferenceSampler)(len(dataset)),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=True,
    )


class ClassificationNet(nn.Module):
    """Wrap a classifier: takes ``(images, labels)``; returns the cross-entropy loss in
    training, the logits in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def device(self):
        """The device of the wrapped model's parameters."""
        return next(self.model.parameters()).device

    def forward(self, inputs):
        image, label = inputs
        pred = self.model(image.to(self.device))
        if self.training:
            return F.cross_entropy(pred, label.to(self.device))
        return pred


class ClassificationAcc(DatasetEvaluator):
    """Top-1 accuracy over all processes: ``{"accuracy": fraction}``."""

    def reset(self):
        self.corr = self.total = 0

    def process(self, inputs, outputs):
        _, label = inputs
        self.corr += (outputs.argmax(dim=1).cpu() == label.cpu()).sum().item()
        self.total += len(label)

    def evaluate(self):
        all_corr_total = comm.all_gather([self.corr, self.total])
        corr = sum(x[0] for x in all_corr_total)
        total = sum(x[1] for x in all_corr_total)
        return {"accuracy": corr / total}


# --- End of the code that belongs in a project module.


dataloader = OmegaConf.create()
dataloader.train = L(build_data_loader)(
    dataset=L(torchvision.datasets.ImageNet)(
        root="/path/to/imagenet",
        split="train",
        transform=L(T.Compose)(
            transforms=[
                L(T.RandomResizedCrop)(size=224),
                L(T.RandomHorizontalFlip)(),
                T.ToTensor(),
                L(T.Normalize)(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            ]
        ),
    ),
    batch_size=256 // 8,
    num_workers=4,
    training=True,
)

dataloader.test = L(build_data_loader)(
    dataset=L(torchvision.datasets.ImageNet)(
        root="${...train.dataset.root}",
        split="val",
        transform=L(T.Compose)(
            transforms=[
                L(T.Resize)(size=256),
                L(T.CenterCrop)(size=224),
                T.ToTensor(),
                L(T.Normalize)(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
            ]
        ),
    ),
    batch_size=256 // 8,
    num_workers=4,
    training=False,
)

dataloader.evaluator = L(ClassificationAcc)()

model = L(ClassificationNet)(
    model=L(ResNet)(block=Bottleneck, layers=[3, 4, 6, 3], zero_init_residual=True)
)


optimizer = L(torch.optim.SGD)(
    params=L(get_default_optimizer_params)(),
    lr=0.1,
    momentum=0.9,
    weight_decay=1e-4,
)

lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01, 0.001], milestones=[30, 60, 90, 100]
    ),
    warmup_length=1 / 100,
    warmup_factor=0.1,
)


train = get_config("common/train.py").train
train.init_checkpoint = None
train.max_iter = 100 * 1281167 // 256
