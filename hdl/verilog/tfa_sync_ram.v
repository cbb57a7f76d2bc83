// Synchronous RAM of the chip's large memories (hdl/memport.py SyncMemory): one write port with
// a write enable per GRAN-bit group, one read port, one clock. The read is not transparent: a
// read and a write of one address in the same cycle returns the old word. No initial contents
// (the design never relies on them). Synthesis tools infer block RAM from it.
module tfa_sync_ram #(
    parameter AW = 10,
    parameter DW = 32,
    parameter DEPTH = 1024,
    parameter GRAN = 32
) (
    input clk,
    input [AW-1:0] raddr,
    input ren,
    output reg [DW-1:0] rdata,
    input [AW-1:0] waddr,
    input [DW-1:0] wdata,
    input [DW/GRAN-1:0] wen
);
    reg [DW-1:0] mem [0:DEPTH-1];
    integer i;
    always @(posedge clk) begin
        for (i = 0; i < DW / GRAN; i = i + 1)
            if (wen[i]) mem[waddr][i*GRAN +: GRAN] <= wdata[i*GRAN +: GRAN];
        if (ren) rdata <= mem[raddr];
    end
endmodule
