// ImageJ as a test oracle for cpsnake's rois/measure (run: java -cp ij.jar -Djava.awt.headless=true RoiOracle.java IMAGE ROIS.zip|- OUTDIR).
// Writes OUTDIR/info.txt (calibration, type, dimensions), OUTDIR/masks.txt (one line per ROI:
// name z t bx by w h followed by the mask as a 0/1 string, row-major) and OUTDIR/results.tsv (ImageJ's
// Measure for every ROI and every channel, full double precision).
import ij.IJ;
import ij.ImagePlus;
import ij.gui.Roi;
import ij.io.RoiDecoder;
import ij.measure.Calibration;
import ij.measure.Measurements;
import ij.measure.ResultsTable;
import ij.plugin.filter.Analyzer;
import ij.process.ImageProcessor;
import java.awt.Rectangle;
import java.io.FileInputStream;
import java.io.PrintWriter;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.ZipEntry;
import java.util.zip.ZipInputStream;

public class RoiOracle {
    public static void main(String[] args) throws Exception {
        ImagePlus imp = IJ.openImage(args[0]);
        if (imp == null) {
            System.err.println("ImageJ could not open " + args[0]);
            System.exit(2);
        }
        String out = args[2];
        Calibration cal = imp.getCalibration();
        try (PrintWriter info = new PrintWriter(out + "/info.txt")) {
            info.println("bitDepth=" + imp.getBitDepth());
            info.println("pixelWidth=" + cal.pixelWidth);
            info.println("pixelHeight=" + cal.pixelHeight);
            info.println("pixelDepth=" + cal.pixelDepth);
            info.println("frameInterval=" + cal.frameInterval);
            info.println("unit=" + cal.getUnit());
            info.println("scaled=" + cal.scaled());
            info.println("width=" + imp.getWidth());
            info.println("height=" + imp.getHeight());
            info.println("channels=" + imp.getNChannels());
            info.println("slices=" + imp.getNSlices());
            info.println("frames=" + imp.getNFrames());
        }
        if (args[1].equals("-")) return;
        List<Roi> rois = new ArrayList<>();
        List<String> names = new ArrayList<>();
        try (ZipInputStream zis = new ZipInputStream(new FileInputStream(args[1]))) {
            ZipEntry e;
            while ((e = zis.getNextEntry()) != null) {
                byte[] b = zis.readAllBytes();
                Roi r = new RoiDecoder(b, e.getName()).getRoi();
                if (r == null) throw new RuntimeException("RoiDecoder failed on " + e.getName());
                rois.add(r);
                names.add(e.getName());
            }
        }
        int m = Measurements.AREA | Measurements.MEAN | Measurements.STD_DEV | Measurements.MIN_MAX
                | Measurements.CENTROID | Measurements.CENTER_OF_MASS | Measurements.PERIMETER | Measurements.RECT
                | Measurements.ELLIPSE | Measurements.SHAPE_DESCRIPTORS | Measurements.FERET
                | Measurements.INTEGRATED_DENSITY;
        Analyzer.setMeasurements(m);
        int nc = imp.getNChannels();
        try (PrintWriter masks = new PrintWriter(out + "/masks.txt");
             PrintWriter res = new PrintWriter(out + "/results.tsv")) {
            String[] head = null;
            for (int i = 0; i < rois.size(); i++) {
                Roi roi = rois.get(i);
                int z = Math.max(roi.getZPosition(), 1), t = Math.max(roi.getTPosition(), 1);
                if (roi.getZPosition() == 0 && roi.getTPosition() == 0 && roi.getPosition() > 0) {
                    if (imp.getNSlices() > 1) z = roi.getPosition(); else if (imp.getNFrames() > 1) t = roi.getPosition();
                }
                ImageProcessor mask = roi.getMask();
                Rectangle r = roi.getBounds();
                StringBuilder sb = new StringBuilder();
                for (int y = 0; y < r.height; y++)
                    for (int x = 0; x < r.width; x++)
                        sb.append(mask == null || mask.get(x, y) != 0 ? '1' : '0');
                masks.println(names.get(i) + " " + z + " " + t + " " + r.x + " " + r.y + " " + r.width + " " + r.height + " " + sb);
                for (int c = 1; c <= nc; c++) {
                    imp.setPositionWithoutUpdate(c, z, t);
                    imp.setRoi((Roi) roi.clone(), false);
                    ResultsTable rt = new ResultsTable();
                    Analyzer an = new Analyzer(imp, m, rt);
                    an.measure();
                    String[] h = rt.getHeadings();
                    if (head == null) {
                        head = h;
                        StringBuilder hb = new StringBuilder("name\tchannel\tz\tt");
                        for (String s : h) if (!s.equals("Label")) hb.append('\t').append(s);
                        res.println(hb);
                    }
                    StringBuilder vb = new StringBuilder(names.get(i) + "\t" + c + "\t" + z + "\t" + t);
                    for (String s : head) if (!s.equals("Label")) vb.append('\t').append(rt.getValue(s, 0));
                    res.println(vb);
                }
            }
        }
    }
}
