"""The simulated gene panel: real HGNC symbols grouped into expression programs.

Program genes are real markers and members of MSigDB Hallmark sets (Liberzon et al. 2015),
copied here so that pathway scores computed downstream from the Hallmark GMT carry the
simulated signal (G2M/E2F for proliferation, EMT for fibroblasts, IFN-gamma response for
inflamed tumours, ...). The package never reads the GMT at run time.
"""

from __future__ import annotations

# Named in the brief: every panel starts with these, in this order.
REQUIRED_MARKERS = (
    "EPCAM", "KRT8", "KRT18", "KRT19", "ERBB2", "ESR1", "PGR", "MKI67",
    "CD3D", "CD3E", "CD3G", "CD8A", "CD8B", "MS4A1", "CD68", "CD274",
    "PECAM1", "COL1A1", "ACTA2", "PTPRC",
)

# program -> genes. A gene may sit in several programs (e.g. PTPRC in every immune type).
PROGRAMS: dict[str, tuple[str, ...]] = {
    # luminal epithelium (tumour); KRT8/18/19, CLDN4/7, ELF3, MUC1 are Hallmark estrogen-early /
    # apical-junction genes
    "epithelial": (
        "EPCAM", "KRT8", "KRT18", "KRT19", "KRT7", "CDH1", "CLDN4", "CLDN7", "ELF3", "MUC1",
        "CD24", "SPINT2", "AQP3", "CLDN3",
    ),
    # ER+ tumours: Hallmark ESTROGEN_RESPONSE_EARLY plus GATA3/FOXA1
    "estrogen": (
        "ESR1", "PGR", "GREB1", "CA12", "MYB", "TFF1", "TFF3", "XBP1", "GATA3", "FOXA1",
        "AREG", "IGFBP4", "NRIP1", "PDZK1", "STC2", "BCL2",
    ),
    # HER2+ tumours: the 17q12 amplicon
    "her2": ("ERBB2", "GRB7", "STARD3", "PGAP3", "MIEN1", "PNMT"),
    # cycling cells: Hallmark G2M_CHECKPOINT and E2F_TARGETS
    "proliferation": (
        "MKI67", "TOP2A", "CCNB2", "CDK1", "BIRC5", "AURKA", "AURKB", "PLK1", "CDC20", "UBE2C",
        "TPX2", "CENPF", "MCM2", "MCM3", "MCM5", "MCM6", "PCNA", "RRM2", "E2F1", "MYBL2",
        "BUB1", "KIF2C", "NUSAP1", "PRC1", "HMMR", "CENPA", "TK1", "CKS2",
    ),
    # cancer-associated fibroblasts: Hallmark EPITHELIAL_MESENCHYMAL_TRANSITION
    "fibroblast": (
        "COL1A1", "COL1A2", "COL3A1", "COL5A1", "COL5A2", "COL6A3", "FN1", "DCN", "LUM", "SPARC",
        "FAP", "PDGFRB", "POSTN", "THY1", "BGN", "VIM", "TAGLN", "ACTA2", "MMP2", "FBN1",
        "SERPINH1", "TIMP1",
    ),
    # T cells: Hallmark ALLOGRAFT_REJECTION / IL2_STAT5 members
    "t_cell": (
        "PTPRC", "CD3D", "CD3E", "CD3G", "CD2", "CD8A", "CD8B", "CD4", "CD247", "LCK", "ZAP70",
        "ITK", "IL7R", "CCL5", "GZMA", "GZMB", "GZMK", "PRF1", "NKG7", "TRAT1", "CD28", "IL2RA",
        "CTLA4", "FOXP3",
    ),
    "b_cell": (
        "PTPRC", "MS4A1", "CD79A", "CD79B", "CD19", "CD22", "BANK1", "PAX5", "CR2", "IGHM",
        "TNFRSF13C", "LTB", "CD74", "HLA-DRA",
    ),
    # macrophages: Hallmark COMPLEMENT / INFLAMMATORY_RESPONSE members
    "macrophage": (
        "PTPRC", "CD68", "CD163", "CD14", "C1QA", "C1QB", "C1QC", "CSF1R", "LYZ", "MRC1", "MSR1",
        "FCGR3A", "FCGR1A", "ITGAM", "AIF1", "TYROBP", "FCER1G", "APOE", "APOC1", "CTSS", "CTSB",
        "LGMN", "CD74", "HLA-DRA",
    ),
    # endothelium: Hallmark ANGIOGENESIS / COAGULATION members
    "endothelial": (
        "PECAM1", "VWF", "CDH5", "CLDN5", "KDR", "FLT1", "TEK", "ENG", "EMCN", "PLVAP", "ESAM",
        "RAMP2", "SELE", "SELP", "ACKR1", "VCAM1", "ICAM1",
    ),
    # inflamed tumours (patient-level): Hallmark INTERFERON_GAMMA_RESPONSE, incl. CD274 (PD-L1)
    "interferon_gamma": (
        "STAT1", "IRF1", "CXCL9", "CXCL10", "CXCL11", "IDO1", "GBP1", "GBP4", "PSMB8", "PSMB9",
        "TAP1", "HLA-A", "B2M", "CIITA", "CD274", "ISG15",
    ),
}

# Genes with no program: baseline expression only (Hallmark OXPHOS, MYC targets, housekeeping).
FILLER = (
    "ACTB", "GAPDH", "RPLP0", "PPIA", "TBP", "HPRT1", "PGK1", "LDHA", "ENO1", "ALDOA", "TPI1",
    "NDUFS3", "UQCRB", "NDUFS2", "SDHA", "UQCRC1", "NDUFA9", "NDUFS1", "SDHB", "COX5B", "UQCRH",
    "CYCS", "COX8A", "ACO2", "CYC1", "COX5A", "UQCRC2", "COX6A1", "COX6C", "IDH3B", "OGDH",
    "SURF1", "COX6B1", "COX4I1", "COX7C", "UQCRFS1", "SDHC", "FH", "CS", "MDH1", "MDH2",
    "PSMD8", "PSMD7", "SET", "SNRPA1", "RAN", "SRSF2", "G3BP1", "NPM1", "EIF3D", "XPO1", "FBL",
    "EIF4A1", "CANX", "NAP1L1", "CBX3", "CCT3", "C1QBP", "U2AF1", "UBE2L3", "SSBP1", "TCP1",
    "EIF3B", "PSMD14", "SNRPA", "APEX1", "HNRNPR", "PSMB2", "NME1", "SNRPD1", "EEF1B2",
    "HSPD1", "CAD", "RPL18", "DDX18", "RPS2", "RUVBL2", "EIF2S1", "RANBP1", "RFC4", "DUT",
    "PSMA4", "RPS3", "SNRPG", "PHB2", "SSB", "EIF4H", "SRSF3", "CCT4", "TFDP1", "EIF2S2",
    "CDK4", "SNRPD3", "PSMD1", "RACK1", "PABPC4", "CCT5", "PRPS2", "ACP1", "PRPF31", "CCT2",
    "SRM", "UBA2", "KPNB1", "PSMA7", "TRA2B", "PA2G4", "PCBP1", "HNRNPA1", "PPIB", "HSPA5",
    "CALR", "PDIA3", "SEC61B", "SSR1", "DDIT3", "ATF4", "XRCC6", "PARP1", "POLR2A", "RPA2",
    "YWHAZ", "RPL13A", "RPS18", "SDHD", "NDUFB8", "ATP5F1A", "ATP5F1B", "COX7B", "NDUFV1",
    "NDUFA4", "VDAC1", "VDAC2", "TOMM70", "HNRNPD", "HNRNPA2B1", "SYNCRIP", "HDAC2", "CDK2",
    "TARDBP", "ETF1",
)


def _panel() -> tuple[str, ...]:
    """Required markers, then program genes round-robin over programs, then filler; no repeats.

    Round-robin keeps every program represented when a short panel is asked for.
    """
    order: list[str] = list(REQUIRED_MARKERS)
    seen = set(order)
    columns = list(PROGRAMS.values())
    for depth in range(max(len(c) for c in columns)):
        for genes in columns:
            if depth < len(genes) and genes[depth] not in seen:
                order.append(genes[depth])
                seen.add(genes[depth])
    for gene in FILLER:
        if gene not in seen:
            order.append(gene)
            seen.add(gene)
    return tuple(order)


PANEL = _panel()


def gene_panel(n_genes: int) -> list[str]:
    """The first ``n_genes`` genes of the panel; synthetic ``FILLER_0001``... past its end.

    ``n_genes`` must be at least ``len(REQUIRED_MARKERS)`` (20) so the named markers exist.
    """
    if n_genes < len(REQUIRED_MARKERS):
        raise ValueError(f"n_genes must be >= {len(REQUIRED_MARKERS)}, got {n_genes}")
    genes = list(PANEL[:n_genes])
    genes += [f"FILLER_{i:04d}" for i in range(1, n_genes - len(genes) + 1)]
    return genes
