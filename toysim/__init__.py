"""toysim: an exact simulator for the theory of why RLHF safety alignment is shallow.

Quantities are exact (enumeration of the prefix tree), so enable float64 before using them::

    import jax
    jax.config.update("jax_enable_x64", True)

See THEORY.md for the mathematics and the README for the command line.
"""

from ._enumerate import Levels as Levels
from ._enumerate import backward as backward
from ._enumerate import check_fits as check_fits
from ._enumerate import estimate_bytes as estimate_bytes
from ._enumerate import forward as forward
from ._enumerate import levels_from_log_cond as levels_from_log_cond
from ._enumerate import log_backward as log_backward
from ._equilibrium import Equilibrium as Equilibrium
from ._equilibrium import kl_by_position as kl_by_position
from ._equilibrium import sequence_kl as sequence_kl
from ._equilibrium import tilt as tilt
from ._gradient import autodiff_gradient as autodiff_gradient
from ._gradient import covariance_gradient as covariance_gradient
from ._gradient import covariance_weights as covariance_weights
from ._gradient import expected_harm as expected_harm
from ._gradient import fisher_bound as fisher_bound
from ._gradient import prefix_covariance_sq_norm as prefix_covariance_sq_norm
from ._gradient import tree_sq_norm as tree_sq_norm
from ._gradient import untied_autodiff_gradient as untied_autodiff_gradient
from ._gradient import untied_copies_gradient as untied_copies_gradient
from ._harms import AutomatonHarm as AutomatonHarm
from ._harms import TableHarm as TableHarm
from ._harms import automaton_harm as automaton_harm
from ._harms import deadline_harm as deadline_harm
from ._harms import first_decisive_harm as first_decisive_harm
from ._harms import graded_harm as graded_harm
from ._harms import harm_values as harm_values
from ._harms import table_harm as table_harm
from ._harms import trigger_harm as trigger_harm
from ._horizon import determined_masks as determined_masks
from ._horizon import horizon_distribution as horizon_distribution
from ._horizon import sequence_horizon as sequence_horizon
from ._horizon import uniform_horizon as uniform_horizon
from ._instance import Instance as Instance
from ._instance import dumps as dump_instance
from ._instance import load as load_instance
from ._instance import loads as loads_instance
from ._martingale import MartingaleSummary as MartingaleSummary
from ._martingale import harm_information as harm_information
from ._martingale import harm_martingale as harm_martingale
from ._martingale import harm_variance as harm_variance
from ._martingale import innovations as innovations
from ._martingale import martingale_summary as martingale_summary
from ._policies import MarkovParams as MarkovParams
from ._policies import MarkovPolicy as MarkovPolicy
from ._policies import MLPParams as MLPParams
from ._policies import MLPPolicy as MLPPolicy
from ._policies import TabularPolicy as TabularPolicy
from ._policies import prefix_digits as prefix_digits
from ._report import Analysis as Analysis
from ._report import analyze as analyze
from ._report import exact_report as exact_report

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "AutomatonHarm",
    "Equilibrium",
    "Instance",
    "Levels",
    "MLPParams",
    "MLPPolicy",
    "MarkovParams",
    "MarkovPolicy",
    "MartingaleSummary",
    "TableHarm",
    "TabularPolicy",
    "analyze",
    "autodiff_gradient",
    "automaton_harm",
    "backward",
    "check_fits",
    "covariance_gradient",
    "covariance_weights",
    "deadline_harm",
    "determined_masks",
    "dump_instance",
    "estimate_bytes",
    "exact_report",
    "expected_harm",
    "first_decisive_harm",
    "fisher_bound",
    "forward",
    "graded_harm",
    "harm_information",
    "harm_martingale",
    "harm_values",
    "harm_variance",
    "horizon_distribution",
    "innovations",
    "kl_by_position",
    "levels_from_log_cond",
    "load_instance",
    "loads_instance",
    "log_backward",
    "martingale_summary",
    "prefix_covariance_sq_norm",
    "prefix_digits",
    "sequence_horizon",
    "sequence_kl",
    "table_harm",
    "tilt",
    "tree_sq_norm",
    "trigger_harm",
    "uniform_horizon",
    "untied_autodiff_gradient",
    "untied_copies_gradient",
]
